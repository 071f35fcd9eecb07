"""SFT as a model module (algorithms/offline.py): the policy alone, no reference, no head; the
log-probs are computed at the trained tokens only (algorithms/step.py, models/response_logits.py)."""

from __future__ import annotations

import math

from autorlhf_nemo.algorithms.offline import OfflineModel
from autorlhf_nemo.algorithms.sft.loss import sft_loss
from autorlhf_nemo.algorithms.step import policy_forward_step
from autorlhf_nemo.data.supervised import collate_sequences


class SFTModel(OfflineModel):
    def collate(self, rows: list, pad_token_id: int) -> dict:
        return collate_sequences(rows, pad_token_id, self.seq_multiple)

    def forward_step(self):
        return policy_forward_step(self.vocab_size, self.temperature, lambda logprobs, batch: sft_loss(logprobs,
                                                                                           batch["response_mask"]))

    def evaluate_rows(self, rows: list, pad_token_id: int) -> dict:
        """Held-out loss (mean NLL per token) and perplexity exp(loss)."""
        reports = super().evaluate_rows(rows, pad_token_id)
        return {"loss": reports["loss"], "perplexity": math.exp(min(reports["loss"], 700.0))}
