"""The loop of the algorithms that train on a dataset (ILQL, SFT, offline DPO): RLTrainer's
evaluation, checkpoints, logging, plot and report around steps that train on dataset rows
instead of sampling.

    data      this DP rank's share of the step's train.global_batch_size rows, collated
              (model.collate: the algorithm's own layout)
    learn     one optimizer step (model.learn)
    evaluate  the held-out rows' loss reports (model.evaluate_rows: eval/loss, eval/perplexity,
              eval/accuracy, ...) where there are held-out rows; and, where the run decodes
              (ILQL; SFT and DPO with algorithm.eval_generation), RLTrainer's reward of
              greedy / sampled completions of the held-out prompts

The rows of step k are positions k B .. (k + 1) B - 1 of an endless stream of shuffles of the
training rows (shuffle p seeded by train.seed and p): a function of the step alone, so a
resumed run draws what an uninterrupted one would, at any DP size. learn/epoch is the number
of passes over the rows made by the end of the step.
"""

from __future__ import annotations

import torch

from autorlhf_nemo.algorithms.trainer import PhaseTimer, RLTrainer


class OfflineTrainer(RLTrainer):
    def __init__(self, model, task, cfg, train_rows: list, eval_rows: list = (),
                 eval_prompts: list[tuple[str, list[int]]] | None = None, decodes: bool = True,
                 scored: bool = True):
        """``eval_prompts``: (text shown, prompt ids) decoded at evaluations instead of the task's
        held-out prompts; ``decodes``: whether evaluations decode completions at all; ``scored``:
        whether their reward means anything (false: a task without a reward function, whose
        completions are only shown)."""
        super().__init__(model, task, cfg)
        self.rows, self.eval_rows = list(train_rows), list(eval_rows)
        if eval_prompts is not None:
            self.task.eval_prompts = [shown for shown, _ in eval_prompts]
            self.eval_ids = [ids for _, ids in eval_prompts]
        self.decodes = decodes and bool(self.eval_ids)
        self.scored = scored

    def batch_rows(self, step: int) -> list[int]:
        """Dataset indices of step ``step``'s global batch."""
        n, size = len(self.rows), self.cfg.train.global_batch_size
        rows, position = [], step * size
        while len(rows) < size:
            shuffle, offset = divmod(position, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.train.seed + shuffle))
            take = order[offset:offset + size - len(rows)].tolist()
            rows += take
            position += len(take)
        return rows

    def step(self) -> tuple[dict, list[dict]]:
        timer = PhaseTimer()
        rows = [self.rows[i] for i in self._local(self.batch_rows(self.step_count))]
        batch = self.model.collate(rows, self.task.pad_token_id)
        timer("data")
        learn, updates = self.model.learn(batch)
        timer("learn")
        self.step_count += 1
        learn["epoch"] = self.step_count * self.cfg.train.global_batch_size / len(self.rows)
        return {**{f"learn/{k}": v for k, v in learn.items()}, **timer.times}, updates

    def evaluate(self, num_samples: int = 0) -> dict:
        """{"reward": the decoded completions' headline reward (None when the run does not decode),
        "rewards", "samples": as RLTrainer.evaluate, "heldout": {name: value} of the held-out rows
        (absent without them)}."""
        result = super().evaluate(num_samples) if self.decodes else {"reward": None, "rewards": {}, "samples": []}
        if not self.scored:
            result.update(reward=None, rewards={})
        if self.eval_rows:
            result["heldout"] = self.model.evaluate_rows(self.eval_rows, self.task.pad_token_id)
        return result
