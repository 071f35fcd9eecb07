"""The model module of the algorithms that train on a dataset (ILQL, SFT, offline DPO): the
online module's policy, optimizer and checkpoint state (algorithms/base.py), with one optimizer
step per batch of dataset rows instead of epochs x minibatches over a step's samples.

    collate        dataset rows -> a batch of model inputs (the algorithm's own layout)
    learn          one optimizer step on this DP rank's rows of the global batch
    evaluate_rows  the loss's reports (loss, its terms, accuracies) over held-out rows, no grad

The loop around it is algorithms/offline_trainer.py.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state

from autorlhf_nemo.algorithms.base import ROW_WEIGHT, OnlineModel
from autorlhf_nemo.training.batching import data_parallel_microbatches
from autorlhf_nemo.training.engine import forward_only, reduce_reports, train_step

# Held-out rows are evaluated this many micro-batches at a time (one collated chunk).
EVAL_MICRO_BATCHES = 8


class OfflineModel(OnlineModel):
    sequences_per_row = 1  # model sequences of one dataset row (DPO: 2, a pair)

    def __init__(self, cfg, runtime, init_weights):
        super().__init__(cfg, runtime, init_weights)
        self.temperature = 1.0  # log-probs of the data under the policy itself, whatever the task samples at

    def caches_trunk(self) -> bool:
        return False  # every batch is trained on once: nothing to reuse

    def collate(self, rows: list, pad_token_id: int) -> dict:
        """A batch of model inputs for dataset ``rows``."""
        raise NotImplementedError

    def prepare(self, batch: dict) -> dict:
        """What a batch needs before its forward step beyond its rows (DPO: reference log-probs)."""
        return batch

    def learn(self, batch: dict, generator: torch.Generator | None = None) -> tuple[dict, list[dict]]:
        """One optimizer step on this DP rank's rows ``batch``. Returns (metrics, [the update's row])."""
        batch = self.prepare(batch)
        micro = data_parallel_microbatches(batch, 0, 1, self.micro_batch_size)
        lr = self.scheduler.get_lr(self.optimizer.param_groups[0])
        result = train_step(self.policy, self.optimizer, micro, len(micro), self.forward_step(),
                            batch["tokens"].shape[1], self.micro_batch_size, scheduler=self.scheduler)
        self.after_update(result.update_successful)
        self._weights_changed([p for p in self.policy.module.gpt.parameters() if p.requires_grad])
        metrics = {**result.metrics, "lr": lr, "grad_norm": float(result.grad_norm or 0.0), **self.update_metrics()}
        return metrics, [{"epoch": 0, "minibatch": 0, "staleness": 0, **metrics}]

    def after_update(self, applied: bool) -> None:
        """Bookkeeping after an optimizer step (ILQL: the target sync)."""

    def update_metrics(self) -> dict:
        """Extra metrics of an update."""
        return {}

    def chunks(self, rows: list, pad_token_id: int):
        """This DP rank's share of ``rows`` (every dp-th row) as collated batches of whole
        micro-batches. Rows added to fill the last micro-batch are copies of a real row whose
        loss weight is 0 (response_mask 0; ROW_WEIGHT 0 for pairs); a rank without rows gets one
        such batch, so that every rank takes part in the reductions."""
        per_micro = self.micro_batch_size // self.sequences_per_row
        size = per_micro * EVAL_MICRO_BATCHES
        mine = rows[parallel_state.get_data_parallel_rank()::parallel_state.get_data_parallel_world_size()]
        for start in range(0, max(len(mine), 1), size):
            part = mine[start:start + size]
            real = len(part)
            part = part + [rows[0]] * (-len(part) % per_micro or (per_micro if not part else 0))
            batch = self.collate(part, pad_token_id)
            weight = torch.zeros(len(part))
            weight[:real] = 1
            weight = weight.repeat_interleave(self.sequences_per_row)
            batch["response_mask"] = batch["response_mask"] * weight[:, None]
            batch[ROW_WEIGHT] = weight
            yield batch

    @torch.no_grad()
    def evaluate_rows(self, rows: list, pad_token_id: int) -> dict:
        """{name: the DP-wide mean of each report of the loss} over ``rows`` (every rank the same)."""
        step_fn = self.forward_step()
        reports = []
        for batch in self.chunks(rows, pad_token_id):
            batch = self.prepare(batch)
            micro = data_parallel_microbatches(batch, 0, 1, self.micro_batch_size)
            outputs = forward_only(self.policy, micro, len(micro), step_fn, batch["tokens"].shape[1],
                                   self.micro_batch_size)
            reports += [out[2] for out in outputs]
        return reduce_reports(reports)
