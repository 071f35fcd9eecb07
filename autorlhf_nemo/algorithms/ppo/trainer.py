"""The PPO loop: per step, named and timed phases.

    generate    sample responses to this DP rank's share of the step's prompts
    score       reward_fn on the decoded samples, once per model-parallel group
    experience  policy log-probs + values, reference log-probs, rewards, GAE
    learn       ppo_epochs x minibatches Megatron optimizer steps; KL controller update
    evaluate    every train.eval_every steps (and first/last): reward on held-out prompts
    save        every checkpoint.save_every steps (and last): atomic run checkpoint

Prompts are drawn with the trainer's own RNG, identical on every rank; each
sample is seeded by its global index (``row_seeds``), so a run does not
depend on how rows are split over data-parallel ranks.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from autorlhf_nemo.checkpoint import run_checkpoint
from autorlhf_nemo.config.validate import to_container
from autorlhf_nemo.generation import SamplingParams
from autorlhf_nemo.rewards import score
from autorlhf_nemo.training.engine import broadcast_from_last_stage
from autorlhf_nemo.training.run_logger import RunLogger


class PhaseTimer:
    def __init__(self):
        self.times, self.start = {}, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.times[f"time/{name}"] = now - self.start
        self.start = now


class PPOTrainer:
    def __init__(self, model, task, cfg):
        self.model, self.task, self.values = model, task, to_container(cfg)
        self.run_dir = Path(self.values["run_dir"])
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.mp_group = parallel_state.get_model_parallel_group()
        self.generator = model.generator(task.pad_token_id)
        self.prompt_ids = [task.encode(p) for p in task.prompts]
        self.eval_ids = [task.encode(p) for p in task.eval_prompts]
        self.rng = torch.Generator().manual_seed(self.values["train"]["seed"])
        self.step_count = 0
        self.before = None  # evaluation of the initial policy
        self.restored_row = None  # the checkpointed step's metrics, on resume
        self.checkpoints = self.run_dir / "checkpoints"
        self.save_error = None  # a failed save not followed by a successful one (CheckpointSaveError)

    # ------------------------------------------------------------------ sampling
    def _sampling(self, seed: int, row_seeds, greedy: bool = False) -> SamplingParams:
        return SamplingParams(**self.values["task"]["sampling"], greedy=greedy,
                              eos_token_ids=self.task.eos_token_ids, seed=seed, row_seeds=row_seeds)

    def _local(self, rows: list) -> list:
        """This DP rank's contiguous share of a global list (equal shares)."""
        per_rank = len(rows) // self.dp_size
        return rows[self.dp_rank * per_rank:(self.dp_rank + 1) * per_rank]

    def _score(self, prompt_ids, generation) -> tuple[list[str], list[str], list]:
        prompts = [self.task.decode(p) for p in prompt_ids]
        outputs = [self.task.decode(r) for r in generation.responses()]
        samples = [p + o for p, o in zip(prompts, outputs)]
        lengths = generation.response_mask.sum(-1).tolist()
        return prompts, outputs, score(self.task.reward_fn, samples, prompts, outputs,
                                       response_lengths=lengths, group=self.mp_group)

    # ------------------------------------------------------------------ one step
    def step(self) -> dict:
        a = self.values["algorithm"]
        timer = PhaseTimer()
        picks = torch.randint(len(self.prompt_ids), (a["rollouts_per_step"],), generator=self.rng).tolist()
        rows = self._local(list(range(a["rollouts_per_step"])))
        prompts = [self.prompt_ids[picks[i]] for i in rows]
        seed = self.values["train"]["seed"] + self.step_count
        generation = self.generator.generate(prompts, self._sampling(seed, rows))
        timer("generate")
        _, _, scores = self._score(prompts, generation)
        timer("score")
        experience, stats = self.model.make_experience(generation, score_tensor(scores, generation.response_mask))
        timer("experience")
        learn = self.model.training_step(experience, self.rng)
        stats = broadcast_from_last_stage(stats)
        self.model.update_kl_controller(stats["kl"], a["rollouts_per_step"])
        timer("learn")
        self.step_count += 1
        return {**{f"rollout/{k}": v for k, v in stats.items()}, **{f"learn/{k}": v for k, v in learn.items()},
                "kl_coef": self.model.kl_controller.value, **timer.times}

    def evaluate(self, num_samples: int = 0) -> tuple[float, list[tuple[str, str, float]]]:
        """Mean reward on the held-out prompts (greedy or sampled with a fixed seed)
        and the first ``num_samples`` (prompt, output, reward) triples."""
        all_rows = list(range(len(self.eval_ids)))
        rows = all_rows[self.dp_rank::self.dp_size]
        prompts = [self.eval_ids[i] for i in rows]
        generation = self.generator.generate(prompts, self._sampling(
            seed=self.values["train"]["seed"] + 10**6, row_seeds=rows, greedy=self.task.eval_greedy))
        _, outputs, scores = self._score(prompts, generation)
        rewards = [float(sum(s)) if isinstance(s, list) else s for s in scores]  # per-token scores summed
        totals = torch.tensor([sum(rewards), float(len(rewards))], dtype=torch.float64,
                              device=generation.response_ids.device)
        dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
        shown = [self.task.eval_prompts[i] for i in rows]  # the prompt as written, not its chat template
        return (totals[0] / totals[1]).item(), list(zip(shown, outputs, rewards))[:num_samples]

    # ------------------------------------------------------------------ checkpoints
    def state(self, metrics: dict | None = None) -> dict:
        """Replicated checkpoint state; ``metrics``: this step's row, restored into
        metrics.jsonl on resume if the run died before writing it."""
        return {"step": self.step_count, "rng": self.rng.get_state(), "before": self.before,
                "metrics": metrics, **self.model.algorithm_state()}

    def save(self, metrics: dict | None = None) -> Path:
        return run_checkpoint.save(self.checkpoints, self.step_count, self.model, self.state(metrics),
                                   self.values["checkpoint"]["keep_last"])

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
        self.before, self.restored_row = state["before"], state["metrics"]
        self.model.load_algorithm_state(state)
        return True

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        """Run to train.total_steps; returns {"before": eval, "after": eval, "history": [...]}."""
        v = self.values
        total, eval_every, save_every = (v["train"]["total_steps"], v["train"]["eval_every"],
                                         v["checkpoint"]["save_every"])
        rank0 = dist.get_rank() == 0
        resumed = v["checkpoint"]["resume"] and self.resume()
        logging_cfg = v["logging"]
        logger = RunLogger(self.run_dir, total, enabled=rank0, progress_bar=logging_cfg["progress_bar"],
                           tensorboard=logging_cfg["tensorboard"], wandb=logging_cfg["wandb"],
                           wandb_project=logging_cfg["wandb_project"], config=v, start_step=self.step_count,
                           restored_row=self.restored_row)
        if resumed:
            logger.message(f"resumed from step {self.step_count} ({self.checkpoints})")
        after = None
        if not resumed:
            reward, samples = self.evaluate(logging_cfg["num_samples"])
            self.before = {"reward": reward, "samples": samples}
            logger.log(0, {"eval/reward": reward})
        while self.step_count < total:
            metrics = self.step()
            timer = PhaseTimer()
            last = self.step_count == total
            if last:
                reward, samples = self.evaluate(logging_cfg["num_samples"])
                metrics["eval/reward"], after = reward, {"reward": reward, "samples": samples}
                timer("evaluate")
            elif eval_every and self.step_count % eval_every == 0:
                metrics["eval/reward"], _ = self.evaluate()
                timer("evaluate")
            if last or (save_every and self.step_count % save_every == 0):
                try:
                    self.save(metrics={**metrics, **timer.times})
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
            logger.log(self.step_count, metrics)
        if after is None:  # resumed a finished run
            reward, samples = self.evaluate(logging_cfg["num_samples"])
            after = {"reward": reward, "samples": samples}
        logger.plot()
        logger.close()
        return {"before": self.before, "after": after, "history": logger.history}


def score_tensor(scores: list, response_mask: torch.Tensor) -> torch.Tensor:
    """[b] sequence scores, or [b, R] from per-token score lists (one per response token),
    on the device of ``response_mask``: the rewards' way from the host onto the device."""
    if not scores or not isinstance(scores[0], (list, tuple)):
        return torch.tensor(scores, dtype=torch.float32).to(response_mask.device)
    dense = torch.zeros(response_mask.shape, dtype=torch.float32)
    for row, values in enumerate(scores):
        dense[row, :len(values)] = torch.tensor(values, dtype=torch.float32)
    return dense.to(response_mask.device)
