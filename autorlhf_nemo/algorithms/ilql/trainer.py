"""The offline loop of ILQL: RLTrainer's evaluation, checkpoints and logging around steps that
train on the dataset instead of sampling.

    data      this DP rank's share of the step's train.global_batch_size rows, collated
    learn     one optimizer step (ILQLModel.learn), the target sync when due
    evaluate  the held-out prompts decoded at every beta of algorithm.betas (Q-guided; beta 0 is
              the policy alone): eval/reward@beta=x; the headline is algorithm.report_beta's
              figure, or the best beta's

The rows of step k are positions k B .. (k + 1) B - 1 of an endless stream of shuffles of the
dataset (shuffle p seeded by train.seed and p): a function of the step alone, so a resumed
run draws what an uninterrupted one would, at any DP size.
"""

from __future__ import annotations

import torch

from autorlhf_nemo.algorithms.trainer import PhaseTimer, RLTrainer
from autorlhf_nemo.data.offline import OfflineDataset, collate


class OfflineTrainer(RLTrainer):
    def __init__(self, model, task, cfg, dataset: OfflineDataset):
        super().__init__(model, task, cfg)
        self.dataset = dataset
        self.beta = 0.0  # the Q-guidance of the evaluation being run

    def batch_rows(self, step: int) -> list[int]:
        """Dataset indices of step ``step``'s global batch."""
        n, size = len(self.dataset.rows), self.cfg.train.global_batch_size
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
        rows = [self.dataset.rows[i] for i in self._local(self.batch_rows(self.step_count))]
        batch = collate(rows, self.task.pad_token_id, self.model.seq_multiple)
        timer("data")
        learn, updates = self.model.learn(batch)
        timer("learn")
        self.step_count += 1
        return {**{f"learn/{k}": v for k, v in learn.items()}, **timer.times}, updates

    def _sampling(self, seed: int, row_seeds, greedy: bool = False, temperature: float | None = None):
        params = super()._sampling(seed, row_seeds, greedy, temperature)
        params.hidden_processors = self.model.guidance(self.beta)
        return params

    def evaluate(self, num_samples: int = 0) -> dict:
        """RLTrainer.evaluate at every beta: {"reward": the headline beta's, "beta": that beta,
        "by_beta": {beta: reward}, "rewards": {"<pass>@beta=<beta>": reward}, "samples": the
        headline beta's}."""
        a = self.cfg.algorithm
        results = {}
        try:
            for beta in a.betas:
                self.beta = beta
                results[beta] = super().evaluate(num_samples)
        finally:
            self.beta = 0.0
        headline = a.report_beta if a.report_beta is not None else max(a.betas, key=lambda b: results[b]["reward"])
        return {"reward": results[headline]["reward"], "beta": headline,
                "by_beta": {f"{b:g}": r["reward"] for b, r in results.items()},
                "rewards": {f"{name}@beta={b:g}": value for b, r in results.items() for name, value in r["rewards"].items()},
                "samples": results[headline]["samples"]}
