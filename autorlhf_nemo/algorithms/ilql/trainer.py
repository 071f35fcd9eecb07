"""ILQL's loop: the offline loop (algorithms/offline_trainer.py) on the offline dataset's rows
(data/offline.py), evaluated at every beta of algorithm.betas:

    evaluate  the held-out prompts decoded at every beta (Q-guided; beta 0 is the policy alone):
              eval/reward@beta=x; the headline is algorithm.report_beta's figure, or the best beta's
"""

from __future__ import annotations

from autorlhf_nemo.algorithms.offline_trainer import OfflineTrainer
from autorlhf_nemo.data.offline import OfflineDataset


class ILQLTrainer(OfflineTrainer):
    def __init__(self, model, task, cfg, dataset: OfflineDataset):
        super().__init__(model, task, cfg, dataset.rows)
        self.dataset = dataset
        self.beta = 0.0  # the Q-guidance of the evaluation being run

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
