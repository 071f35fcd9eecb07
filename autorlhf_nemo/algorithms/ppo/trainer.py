"""The PPO loop: named, timed phases per step.

    generate   sample responses to this DP rank's prompts (generation engine)
    score      reward_fn on the decoded samples, once per model-parallel group
    experience policy log-probs and values, reference log-probs, rewards, GAE
    learn      ppo_epochs x minibatches of Megatron optimizer steps
    (kl)       the KL controller sees the rollout's mean KL

Prompts are token-id lists; ``decode`` turns token ids into text for the
reward function. Everything model-related runs at the layout of ``cfg``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from megatron.core import parallel_state

from autorlhf_nemo.algorithms.ppo.kl import make_kl_controller
from autorlhf_nemo.algorithms.ppo.rollout import make_experience
from autorlhf_nemo.algorithms.ppo.step import ppo_forward_step
from autorlhf_nemo.generation import Generator, SamplingParams
from autorlhf_nemo.rewards import score
from autorlhf_nemo.training.batching import data_parallel_microbatches
from autorlhf_nemo.training.engine import broadcast_from_last_stage, train_step


@dataclass
class PPOSettings:
    rollouts_per_step: int = 64       # prompts sampled per PPO step, over all DP ranks
    ppo_epochs: int = 4
    minibatches: int = 1              # optimizer steps per epoch
    init_kl_coef: float = 0.05
    target_kl: float | None = None    # adaptive KL when set
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    clip_ratio: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 1.0
    entropy_coef: float = 0.0
    clip_reward: float | None = 10.0
    whiten_advantages: bool = True
    sampling: dict = field(default_factory=lambda: {"max_new_tokens": 16, "temperature": 1.0})


class PPOTrainer:
    def __init__(self, policy_ddp, optimizer, reference, settings: PPOSettings, *, vocab_size: int,
                 pad_token_id: int, eos_token_ids: Sequence[int], prompts: Sequence[Sequence[int]],
                 decode: Callable[[Sequence[int]], str], reward_fn: Callable, micro_batch_size: int,
                 seed: int = 0):
        self.policy, self.optimizer, self.reference, self.s = policy_ddp, optimizer, reference, settings
        self.vocab_size, self.micro_batch_size = vocab_size, micro_batch_size
        self.prompts, self.decode, self.reward_fn = list(prompts), decode, reward_fn
        self.generator = Generator(policy_ddp.module.gpt, vocab_size, pad_token_id)
        self.eos_token_ids = list(eos_token_ids)
        self.kl_controller = make_kl_controller(settings.init_kl_coef, settings.target_kl, settings.kl_horizon)
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.seq_multiple = tp if policy_ddp.module.config.sequence_parallel else 1
        self.mp_group = parallel_state.get_model_parallel_group()
        self.rng = torch.Generator().manual_seed(seed)
        self.iteration = 0
        if settings.rollouts_per_step % (self.dp_size * micro_batch_size * settings.minibatches):
            raise ValueError(f"rollouts_per_step={settings.rollouts_per_step} must be divisible by DP size "
                             f"{self.dp_size} x micro_batch_size {micro_batch_size} x minibatches "
                             f"{settings.minibatches}")

    def _prompt_batch(self) -> list[list[int]]:
        """This DP rank's share of ``rollouts_per_step`` prompts (same draw on every rank)."""
        picks = torch.randint(len(self.prompts), (self.s.rollouts_per_step,), generator=self.rng).tolist()
        per_rank = self.s.rollouts_per_step // self.dp_size
        return [self.prompts[i] for i in picks[self.dp_rank * per_rank:(self.dp_rank + 1) * per_rank]]

    def step(self) -> dict:
        timings, s = {}, self.s
        clock = time.perf_counter()

        def phase(name):
            nonlocal clock
            now = time.perf_counter()
            timings[f"time/{name}"] = now - clock
            clock = now

        prompts = self._prompt_batch()
        out = self.generator.generate(prompts, SamplingParams(
            eos_token_ids=self.eos_token_ids, seed=1000 + self.iteration, **s.sampling))
        phase("generate")
        prompt_texts = [self.decode(p) for p in prompts]
        outputs = [self.decode(r) for r in out.responses()]
        samples = [p + o for p, o in zip(prompt_texts, outputs)]
        scores = torch.tensor(score(self.reward_fn, samples, prompt_texts, outputs, group=self.mp_group))
        phase("score")
        experience, stats = make_experience(
            out, scores, self.policy, self.reference, vocab_size=self.vocab_size,
            kl_coef=self.kl_controller.value, gamma=s.gamma, lam=s.lam, micro_batch_size=self.micro_batch_size,
            clip_reward=s.clip_reward, whiten_advantages=s.whiten_advantages, pad_to_multiple_of=self.seq_multiple)
        phase("experience")
        batch = experience.learner_batch(self.seq_multiple)
        seq = batch["tokens"].shape[1]
        per_minibatch = len(prompts) // s.minibatches
        step_fn = ppo_forward_step(self.vocab_size, s.clip_ratio, s.clip_value, s.vf_coef, s.entropy_coef)
        learn = {}
        for _ in range(s.ppo_epochs):
            order = torch.randperm(len(prompts), generator=self.rng)
            for k in range(s.minibatches):
                rows = order[k * per_minibatch:(k + 1) * per_minibatch]
                mb = {key: v[rows] for key, v in batch.items()}
                micro = data_parallel_microbatches(mb, 0, 1, self.micro_batch_size)
                result = train_step(self.policy, self.optimizer, micro, len(micro), step_fn, seq,
                                    self.micro_batch_size)
                learn = result.metrics
        phase("learn")
        stats = broadcast_from_last_stage(stats)
        self.kl_controller.update(stats["kl"], n_steps=s.rollouts_per_step)
        self.iteration += 1
        return {**{f"rollout/{k}": v for k, v in stats.items()}, **{f"learn/{k}": v for k, v in learn.items()},
                "kl_coef": self.kl_controller.value, **timings}
