"""PPO as a model module: the shared OnlineModel (algorithms/base.py) with a value head,
a KL controller and reward statistics.

    make_experience   policy log-probs + values and reference log-probs (one forward each),
                      KL-penalised per-token rewards, GAE (rollout.py); split placement:
                      the generator's log-probs and truncated importance weights (base.off_policy)
    forward_step      clipped policy and value losses (step.py, losses.py)
    after_step        adaptive KL coefficient (kl.py)
"""

from __future__ import annotations

from megatron.core import parallel_state

from autorlhf_nemo.algorithms.base import OnlineModel
from autorlhf_nemo.algorithms.experience import Rollout
from autorlhf_nemo.algorithms.ppo.kl import make_kl_controller
from autorlhf_nemo.algorithms.ppo.rollout import ppo_experience
from autorlhf_nemo.algorithms.ppo.shaping import RunningMoments
from autorlhf_nemo.algorithms.ppo.step import ppo_forward_step


class PPOModel(OnlineModel):
    def __init__(self, cfg, runtime, init_weights):
        super().__init__(cfg, runtime, init_weights)
        a = cfg.algorithm
        self.kl_controller = make_kl_controller(a.init_kl_coef, a.target_kl, a.kl_horizon)
        self.score_moments = RunningMoments()

    def make_experience(self, rollout: Rollout) -> tuple[dict, dict]:
        a, g = self.run_cfg.algorithm, rollout.generation
        scores = rollout.scores.float()
        if a.scale_reward == "running":
            self.score_moments.update(scores, parallel_state.get_data_parallel_group())
            scores = scores / self.score_moments.std
        batch = self.sequence_batch(g)
        policy_out = self.policy_logprobs(batch, with_values=True)
        ref_logprobs = self.reference_logprobs(batch)
        if policy_out is None:  # not the last pipeline stage: only the rows travel on
            return batch, {}
        logprobs, values = policy_out
        logprobs, weights, off_policy = self.off_policy(g, logprobs)
        experience, stats = ppo_experience(scores, g.response_mask, logprobs, values, ref_logprobs,
                                           kl_coef=self.kl_controller.value, gamma=a.gamma, lam=a.lam,
                                           clip_reward=a.clip_reward, whiten_advantages=a.whiten_advantages)
        rows = experience.per_token()
        if weights is not None:  # the clipped objective of each token, weighed: w * max(-A r, -A clip(r))
            rows["advantages"] = rows["advantages"] * weights
        return {**batch, **rows}, {**stats, **off_policy}

    def forward_step(self):
        a = self.run_cfg.algorithm
        return ppo_forward_step(self.vocab_size, a.clip_ratio, a.clip_value, a.vf_coef, a.entropy_coef,
                                self.temperature)

    def after_step(self, stats: dict) -> None:
        a = self.run_cfg.algorithm
        self.kl_controller.update(stats["kl"], n_steps=a.prompts_per_step * a.samples_per_prompt)

    def step_metrics(self) -> dict:
        return {"kl_coef": self.kl_controller.value}

    def algorithm_state(self) -> dict:
        return {**super().algorithm_state(), "kl_controller": self.kl_controller.state_dict(),
                "score_moments": self.score_moments.state_dict()}

    def load_algorithm_state(self, state: dict) -> None:
        super().load_algorithm_state(state)
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.score_moments.load_state_dict(state["score_moments"])
