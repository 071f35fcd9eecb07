"""Offline DPO as a model module (algorithms/offline.py). A batch holds (chosen, rejected)
sequences side by side (c0, r0, c1, r1, ...: data/supervised.collate_pairs), so a pair never
splits across an (even) micro-batch; the loss is online DPO's (algorithms/online_dpo/loss.py).

Reference log-probs (algorithm.reference):
    precompute  the initial policy's, of every row, in one no-grad pass before training
                (``precompute_reference``), saved in <run_dir>/reference_logps.pt with the data's
                fingerprint (a resumed run reads them back); nothing else is resident while training
    online      a frozen reference model (algorithms/base.py's, sharing the frozen trunk,
                offloaded with algorithm.offload_reference) per batch

Sequence log-probs are sums over the response tokens, or their means per token
(``DPOConfig.averages``: TRL averages for IPO). ``sft_weight`` adds the chosen response's
mean NLL per token to each pair's loss (RPO)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from autorlhf_nemo.algorithms.base import ROW_WEIGHT
from autorlhf_nemo.algorithms.experience import response_forward
from autorlhf_nemo.algorithms.offline import OfflineModel
from autorlhf_nemo.algorithms.online_dpo.loss import dpo_loss
from autorlhf_nemo.algorithms.step import policy_forward_step, sequence_sums
from autorlhf_nemo.data.supervised import collate_pairs, fingerprint
from autorlhf_nemo.parallel.runtime import compute_device


def dpo_pair_loss(logprobs: torch.Tensor, batch: dict, beta: float, loss_type: str, label_smoothing: float,
                  sft_weight: float, average: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``logprobs`` [2n, R] of the response tokens of n pairs (c0, r0, c1, r1, ...); the batch's
    ``ref_logps`` [2n] (sums), ``response_mask`` [2n, R] and optional ``row_weight`` [2n]. Returns
    (sum of the pairs' losses, pairs counted, reports): dpo_loss's, plus logps_chosen /
    logps_rejected (sums) and nll_chosen (mean per token). With ``average`` the loss sees per-token
    means; the implicit rewards, margin and accuracy stay beta x the summed log-ratios (as TRL reports them)."""
    mask = batch["response_mask"]
    tokens = mask.sum(-1).clamp(min=1)
    sums, ref_sums = sequence_sums(logprobs, mask), batch["ref_logps"].to(logprobs.dtype)
    logps, ref = (sums / tokens, ref_sums / tokens) if average else (sums, ref_sums)
    weights = batch[ROW_WEIGHT][0::2] if ROW_WEIGHT in batch else torch.ones_like(logps[0::2])
    loss, count, stats = dpo_loss(logps[0::2], logps[1::2], ref[0::2], ref[1::2], beta, loss_type, weights,
                                  label_smoothing)
    if average:
        with torch.no_grad():
            stats.update(dpo_loss(sums[0::2], sums[1::2], ref_sums[0::2], ref_sums[1::2], beta, loss_type, weights,
                                  label_smoothing)[2])
    nll = -sums[0::2] / tokens[0::2]
    if sft_weight:
        loss = loss + sft_weight * (nll * weights).sum()
    stats.update(logps_chosen=((sums[0::2] * weights).sum().detach(), count),
                 logps_rejected=((sums[1::2] * weights).sum().detach(), count),
                 nll_chosen=((nll * weights).sum().detach(), count))
    return loss, count, stats


class DPOModel(OfflineModel):
    sequences_per_row = 2

    def collate(self, rows: list, pad_token_id: int) -> dict:
        return collate_pairs(rows, pad_token_id, self.seq_multiple)

    def prepare(self, batch: dict) -> dict:
        """Reference log-probs per batch with reference=online (the last stage's; others need none)."""
        if self.reference is not None:
            ref = self.reference_logprobs(batch)
            if ref is not None:
                batch = {**batch, "ref_logps": ref.sum(-1)}
        return batch

    def forward_step(self):
        a = self.run_cfg.algorithm
        return policy_forward_step(self.vocab_size, self.temperature, lambda logprobs, batch: dpo_pair_loss(
            logprobs, batch, a.beta, a.loss_type, a.label_smoothing, a.sft_weight, a.averages()))

    @torch.no_grad()
    def precompute_reference(self, splits: list[list], pad_token_id: int, run_dir: Path, log=print) -> None:
        """Fill ``reference`` of every PairRow of ``splits`` (lists of rows) with the current
        policy's (chosen, rejected) log-prob sums: read from <run_dir>/reference_logps.pt when it
        holds these rows' (same fingerprint, model, checkpoint, dtype and seed; rank 0 reads it and
        broadcasts), else computed (each DP rank its share, gathered to every rank) and saved there
        by rank 0. Call it before training starts (a resumed run: before its checkpoint loads)."""
        rows = [row for split in splits for row in split]
        path = Path(run_dir) / "reference_logps.pt"
        m = self.run_cfg.model
        key = {"fingerprint": fingerprint(rows), "model": m.name, "checkpoint": m.hf_checkpoint,
               "params_dtype": m.params_dtype, "seed": self.run_cfg.train.seed}
        # rank 0 alone looks at the file and tells the others (a shared file system may show it late)
        choice = [None]
        if dist.get_rank() == 0 and path.exists():
            saved = torch.load(path, weights_only=True)
            if {k: saved.get(k) for k in key} == key:
                choice = [saved["logps"]]
        dist.broadcast_object_list(choice, src=0)
        values = choice[0]
        if values is not None:
            log(f"reference log-probs of {len(rows)} pairs read from {path}")
        else:
            values = self._reference_logps(rows, pad_token_id)
            error = None  # rank 0's alone: only it writes
            if dist.get_rank() == 0:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    partial = path.with_suffix(".partial")
                    torch.save({**key, "logps": values}, partial)
                    partial.replace(path)
                except OSError as e:
                    error = f"{type(e).__name__}: {e}"
            if error is None:
                log(f"reference log-probs of {len(rows)} pairs computed and saved to {path}")
            else:  # every rank holds them: train on; a resumed run computes them again (from the initial weights)
                log(f"reference log-probs of {len(rows)} pairs computed; saving them to {path} failed ({error}), "
                    f"so a resumed run will compute them again")
        for row, (chosen, rejected) in zip(rows, values.tolist()):
            row.reference = (chosen, rejected)

    def _reference_logps(self, rows: list, pad_token_id: int) -> torch.Tensor:
        """[n, 2] float64 (chosen, rejected) log-prob sums of ``rows`` under the policy, on every rank."""
        n = len(rows)
        dp_rank, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
        table = torch.zeros(n, 2, dtype=torch.float64, device=compute_device())
        writes = parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
        mine = list(range(dp_rank, n, dp))
        start = 0
        for batch in self.chunks(rows, pad_token_id):
            out = response_forward(self.policy, batch, self.vocab_size, self.micro_batch_size)
            real = int(batch[ROW_WEIGHT].sum().item()) // 2
            if writes and real:
                sums = out[0].sum(-1).double().reshape(-1, 2)[:real]
                table[mine[start:start + real]] = sums
            start += real
        dist.all_reduce(table)  # each row written once, by its DP rank's first TP rank of the last stage
        return table.cpu()
