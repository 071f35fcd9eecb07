"""The loop of every online algorithm: per step, named and timed phases.

    generate    sample samples_per_prompt responses to each of this DP rank's prompts
                (the samples of a prompt share one prefill)
    score       reward_fn on the decoded samples, once per model-parallel group;
                the missing-EOS penalty
    experience  the algorithm's forwards and advantages (model.make_experience)
    learn       epochs x minibatches optimizer steps (model.learn); model.after_step
    evaluate    every train.eval_every steps (and first/last): reward on held-out prompts
    save        every checkpoint.save_every steps (and last): atomic run checkpoint

Step t's prompts are drawn from a stream seeded by (train.seed, t), identical on every rank;
each sample is seeded by its global index (prompt index x samples_per_prompt + sample), so a
run does not depend on how prompts are split over data-parallel ranks (rollout/steps.py).

rollout.placement=split: the generate phase is the generators' (rollout/generator_loop.py):
the learner waits for step t's samples (``wait``), learns on them, and queues its new
weights for the generators (``sync``); each step logs the staleness of its samples.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from autorlhf_nemo.algorithms.experience import Rollout, penalize_missing_eos
from autorlhf_nemo.checkpoint import run_checkpoint
from autorlhf_nemo.config.schema import RootConfig
from autorlhf_nemo.generation import SamplingParams
from autorlhf_nemo.rewards import score
from autorlhf_nemo.rollout import steps
from autorlhf_nemo.training.engine import broadcast_from_last_stage
from autorlhf_nemo.training.run_logger import RunLogger

_EVAL_SEED = 10**6  # evaluation streams: train.seed + this + the evaluation's seed


class PhaseTimer:
    def __init__(self):
        self.times, self.start = {}, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.times[f"time/{name}"] = now - self.start
        self.start = now


class RLTrainer:
    def __init__(self, model, task, cfg: RootConfig):
        self.model, self.task, self.cfg = model, task, cfg
        self.run_dir = Path(cfg.run_dir)
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.mp_group = parallel_state.get_model_parallel_group()
        self.generator = model.generator(task.pad_token_id)
        self.prompt_ids = [task.encode(p) for p in task.prompts]
        self.eval_ids = [task.encode(p) for p in task.eval_prompts]
        self.rng = torch.Generator().manual_seed(cfg.train.seed)
        self.step_count = 0
        self.before = None  # evaluation of the initial policy
        self.restored_row = None  # the checkpointed step's metrics, on resume
        self.checkpoints = self.run_dir / "checkpoints"
        self.save_error = None  # a failed save not followed by a successful one (CheckpointSaveError)
        self.rollouts = None  # split placement: the generators' samples (rollout/remote.py)
        if cfg.rollout.placement == "split":
            from autorlhf_nemo.rollout.generator_loop import message_widths
            from autorlhf_nemo.rollout.remote import RemoteRollouts

            self.rollouts = RemoteRollouts(cfg, model.runtime, model.policy.module.gpt, task.pad_token_id,
                                           message_widths(cfg, self.prompt_ids))

    # ------------------------------------------------------------------ sampling
    def _sampling(self, seed: int, row_seeds, greedy: bool = False, temperature: float | None = None) -> SamplingParams:
        return steps.sampling_params(self.cfg, self.task.eos_token_ids, seed, row_seeds, greedy, temperature)

    def _local(self, rows: list) -> list:
        """This DP rank's contiguous share of a global list (equal shares)."""
        return steps.share(rows, self.dp_rank, self.dp_size)

    def _rollout(self, local: list[int], prompts: list, timer) -> tuple:
        """(this DP rank's samples of the step: of ``prompts``, the step's prompts ``local``; the
        version of the policy that drew them; generator metrics)."""
        k = self.cfg.algorithm.samples_per_prompt
        rows = steps.global_rows(local, k)
        if self.rollouts is None:
            generation = self.generator.generate(prompts, self._sampling(self.cfg.train.seed + self.step_count, rows),
                                                 samples_per_prompt=k)
            timer("generate")
            return generation, self.step_count, {}
        generation, info = self.rollouts.receive(self.step_count)
        timer("wait")
        return generation.select(rows), info.version, {
            "generator/time_generate": info.generate_seconds, "generator/time_wait": info.wait_seconds}

    def _score(self, prompt_ids, generation) -> tuple[list[str], list[str], list]:
        """``prompt_ids``: one per generation row."""
        prompts = [self.task.decode(p) for p in prompt_ids]
        outputs = [self.task.decode(r) for r in generation.responses()]
        samples = [p + o for p, o in zip(prompts, outputs)]
        lengths = generation.response_mask.sum(-1).tolist()
        return prompts, outputs, score(self.task.reward_fn, samples, prompts, outputs,
                                       response_lengths=lengths, group=self.mp_group)

    # ------------------------------------------------------------------ one step
    def step(self) -> tuple[dict, list[dict]]:
        """One generate-score-learn step: (the step's metrics, one row per optimizer update)."""
        a = self.cfg.algorithm
        k = a.samples_per_prompt
        timer = PhaseTimer()
        picks = steps.step_prompts(self.cfg.train.seed, self.step_count, len(self.prompt_ids), a.prompts_per_step)
        local = self._local(list(range(a.prompts_per_step)))
        prompts = [self.prompt_ids[picks[i]] for i in local]
        generation, version, generator_metrics = self._rollout(local, prompts, timer)
        _, _, scores = self._score([p for p in prompts for _ in range(k)], generation)
        scores = penalize_missing_eos(score_tensor(scores, generation.response_mask), generation,
                                      a.missing_eos_penalty, a.penalty_mode)
        timer("score")
        batch, stats = self.model.make_experience(Rollout(generation, scores, k))
        timer("experience")
        learn, updates = self.model.learn(batch, self.rng)
        stats = broadcast_from_last_stage(stats)
        if "kl" not in stats and updates and "sequence_kl" in updates[0]:
            # No forward of the sampling policy ran (one update per step, or online DPO): its
            # KL to the reference is what the first update measured, before it changed anything.
            stats["kl"] = updates[0]["sequence_kl"]
        self.model.after_step(stats)
        timer("learn")
        stats["staleness"] = self.step_count - version
        self.step_count += 1
        if self.rollouts is not None:
            self.rollouts.after_update(self.step_count)
            timer("sync")
        metrics = {**{f"rollout/{k}": v for k, v in stats.items()}, **{f"learn/{k}": v for k, v in learn.items()},
                   **self.model.step_metrics(), **generator_metrics, **timer.times}
        return metrics, updates

    def evaluate(self, num_samples: int = 0) -> dict:
        """Rewards on the held-out prompts: greedy (task.eval_greedy) and one sampled pass per
        seed in task.eval_seeds. Returns {"reward": the headline figure (greedy, else the mean of
        the sampled passes), "rewards": {pass: mean reward}, "samples": the first ``num_samples``
        (prompt, output, reward) triples of the headline pass}."""
        t = self.cfg.task
        temperature = t.eval_temperature if t.eval_temperature is not None else t.sampling.temperature
        passes = ([("greedy", True, 0)] if t.eval_greedy else []) + \
                 [(f"t{temperature:g}_seed{s}", False, s) for s in t.eval_seeds]
        rewards, samples = {}, {}
        for name, greedy, seed in passes:
            rewards[name], samples[name] = self._evaluate_pass(greedy, seed, temperature, num_samples)
        sampled = [rewards[name] for name, greedy, _ in passes if not greedy]
        headline = rewards["greedy"] if t.eval_greedy else sum(sampled) / len(sampled)
        return {"reward": headline, "rewards": rewards, "samples": samples[passes[0][0]]}

    def _evaluate_pass(self, greedy: bool, seed: int, temperature: float, num_samples: int):
        all_rows = list(range(len(self.eval_ids)))
        rows = all_rows[self.dp_rank::self.dp_size]
        prompts = [self.eval_ids[i] for i in rows]
        generation = self.generator.generate(prompts, self._sampling(
            seed=self.cfg.train.seed + _EVAL_SEED + seed, row_seeds=rows, greedy=greedy, temperature=temperature))
        _, outputs, scores = self._score(prompts, generation)
        rewards = [float(sum(s)) if isinstance(s, list) else s for s in scores]  # per-token scores summed
        totals = torch.tensor([sum(rewards), float(len(rewards))], dtype=torch.float64,
                              device=generation.response_ids.device)
        dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
        shown = [self.task.eval_prompts[i] for i in rows]  # the prompt as written, not its chat template
        return (totals[0] / totals[1]).item(), list(zip(shown, outputs, rewards))[:num_samples]

    # ------------------------------------------------------------------ checkpoints
    def state(self, metrics: dict | None = None, updates: list | None = None) -> dict:
        """Replicated checkpoint state; ``metrics``/``updates``: this step's rows, restored into
        metrics.jsonl / updates.jsonl on resume if the run died before writing them;
        ``algorithm``: the model's own state, under its own key so its names cannot shadow these."""
        return {"step": self.step_count, "rng": self.rng.get_state(), "before": self.before,
                "metrics": metrics, "updates": updates, "algorithm": self.model.algorithm_state()}

    def save(self, metrics: dict | None = None, updates: list | None = None) -> Path:
        return run_checkpoint.save(self.checkpoints, self.step_count, self.model, self.state(metrics, updates),
                                   self.cfg.checkpoint.keep_last)

    def resume(self, log=print) -> bool:
        """Continue from the newest complete checkpoint, if any. Every rank picks the same one."""
        found = run_checkpoint.latest_complete(self.checkpoints,
                                               log=log if dist.get_rank() == 0 else run_checkpoint.silent)
        choice = [str(found) if found else None]
        dist.broadcast_object_list(choice, src=0)
        if choice[0] is None:
            return False
        state = run_checkpoint.load(Path(choice[0]), self.model)
        self.step_count = state["step"]
        self.rng.set_state(state["rng"])
        self.before = state["before"]
        self.restored_row = (state["metrics"], state.get("updates"))
        self.model.load_algorithm_state(state.get("algorithm", state))  # checkpoints before 2026-12-03: merged in
        return True

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        """Run to train.total_steps; returns {"before": eval, "after": eval, "history": [...]}."""
        total, eval_every = self.cfg.train.total_steps, self.cfg.train.eval_every
        save_every = self.cfg.checkpoint.save_every
        logging_cfg = self.cfg.logging
        rank0 = dist.get_rank() == 0
        resumed = self.cfg.checkpoint.resume and self.resume()
        restored_metrics, restored_updates = self.restored_row or (None, None)
        logger = RunLogger(self.run_dir, total, enabled=rank0, progress_bar=logging_cfg.progress_bar,
                           tensorboard=logging_cfg.tensorboard, wandb=logging_cfg.wandb,
                           wandb_project=logging_cfg.wandb_project, config=dataclasses.asdict(self.cfg),
                           start_step=self.step_count, restored_row=restored_metrics,
                           restored_updates=restored_updates)
        if resumed:
            logger.message(f"resumed from step {self.step_count} ({self.checkpoints})")
        if self.rollouts is not None:  # the generators start from these weights (the checkpoint's on resume)
            self.rollouts.start(self.step_count)
        after = None
        if not resumed:
            self.before = self.evaluate(logging_cfg.num_samples)
            logger.log(0, eval_metrics(self.before))
        while self.step_count < total:
            metrics, updates = self.step()
            timer = PhaseTimer()
            last = self.step_count == total
            if last:
                after = self.evaluate(logging_cfg.num_samples)
                metrics.update(eval_metrics(after))
                timer("evaluate")
            elif eval_every and self.step_count % eval_every == 0:
                metrics.update(eval_metrics(self.evaluate()))
                timer("evaluate")
            if last or (save_every and self.step_count % save_every == 0):
                try:
                    self.save(metrics={**metrics, **timer.times}, updates=updates)
                    self.save_error = None  # the newest state is saved: an earlier failure is behind us
                except run_checkpoint.CheckpointSaveError as error:  # raised on every rank alike
                    # What was trained stays in memory: train on, export and report; the run
                    # ends with this error (jobs.run_rl) once the HF export and summary exist.
                    self.save_error = error
                    logger.message(f"checkpoint save failed, training goes on: {error}")
                timer("save")
            metrics.update(timer.times)
            metrics["time/step"] = sum(val for key, val in metrics.items()
                                       if key.startswith("time/") and key != "time/step")
            logger.log(self.step_count, metrics, updates)
        if self.rollouts is not None:
            self.rollouts.close()
        if after is None:  # resumed a finished run
            after = self.evaluate(logging_cfg.num_samples)
        logger.plot()
        logger.close()
        return {"before": self.before, "after": after, "history": logger.history}


def eval_metrics(evaluation: dict) -> dict:
    """eval/reward (the headline figure, where completions were decoded), eval/reward_<pass> for
    every pass, and eval/<name> for every held-out loss figure (offline runs: eval/loss, ...)."""
    reward = {} if evaluation["reward"] is None else {"eval/reward": evaluation["reward"]}
    return {**reward,
            **{f"eval/reward_{name}": value for name, value in evaluation["rewards"].items()},
            **{f"eval/reward@beta={beta}": value for beta, value in evaluation.get("by_beta", {}).items()},
            **{f"eval/{name}": value for name, value in evaluation.get("heldout", {}).items()}}


def score_tensor(scores: list, response_mask: torch.Tensor) -> torch.Tensor:
    """[b] sequence scores, or [b, R] from per-token score lists (one per response token),
    on the device of ``response_mask``: the rewards' way from the host onto the device."""
    if not scores or not isinstance(scores[0], (list, tuple)):
        return torch.tensor(scores, dtype=torch.float32).to(response_mask.device)
    dense = torch.zeros(response_mask.shape, dtype=torch.float32)
    for row, values in enumerate(scores):
        dense[row, :len(values)] = torch.tensor(values, dtype=torch.float32)
    return dense.to(response_mask.device)
