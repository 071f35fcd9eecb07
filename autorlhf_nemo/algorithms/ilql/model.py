"""ILQL as a model module (algorithms/offline.py's OfflineModel, trained by trainer.py):
the policy with V, Q and target Q heads on the last stage (models/ilql.py), no reference.

    learn         one optimizer step on a batch of offline rows (data/offline.collate), then,
                  every steps_for_target_q_sync optimizer steps, target <- alpha q + (1 - alpha) target
                  (after_update)
    forward_step  ILQL's loss (loss.py) at the action positions only
    guidance      Q-guided decoding: log_softmax(logits) + beta (min_i Qbar_i - V)

The target sync counts optimizer steps (applied updates), kept in the checkpoint.
"""

from __future__ import annotations

from autorlhf_nemo.algorithms.ilql.loss import ilql_loss
from autorlhf_nemo.algorithms.offline import OfflineModel
from autorlhf_nemo.algorithms.step import megatron_loss
from autorlhf_nemo.data.offline import collate
from autorlhf_nemo.models.ilql import ILQLPolicyModel


class QGuidance:
    """A hidden processor (generation.sampling): scores = log_softmax(logits) + beta (min_i Qbar_i(s, .) - V(s))
    on this TP rank's vocabulary slice [b, V/tp]; top-k / top-p / temperature / greedy follow."""

    def __init__(self, heads, beta: float):
        self.heads, self.beta = heads, beta

    def __call__(self, vp, logits, hidden, tokens):
        return vp.log_softmax(logits) + self.beta * self.heads.advantage(hidden)


class ILQLModel(OfflineModel):
    def __init__(self, cfg, runtime, init_weights):
        super().__init__(cfg, runtime, init_weights)
        self.updates = 0  # optimizer steps applied: the target sync's clock
        self.synced = False  # whether the last update synced the targets

    def build_policy(self, gpt):
        a, m = self.run_cfg.algorithm, self.run_cfg.model
        return ILQLPolicyModel(gpt, m.vocab_size, a.width(m.hidden_size), a.two_qs, a.head_seed)

    @property
    def heads(self):
        """The ILQLHeads on the last pipeline stage; None elsewhere."""
        return self.policy.module.heads

    def guidance(self, beta: float) -> list:
        """The hidden processors of Q-guided decoding at ``beta`` (none at 0: the policy alone)."""
        return [QGuidance(self.heads, beta)] if beta else []

    def forward_step(self):
        a = self.run_cfg.algorithm

        def forward_step(batch: dict, model):
            output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], batch["action_index"])

            def loss_func(output, non_loss_data: bool = False):
                return megatron_loss(*ilql_loss(output.logits, output.qs, output.target_qs, output.vs, batch,
                                                self.vocab_size, a.tau, a.gamma, a.cql_scale, a.awac_scale,
                                                a.awac_beta))

            return output, loss_func

        return forward_step

    def collate(self, rows: list, pad_token_id: int) -> dict:
        return collate(rows, pad_token_id, self.seq_multiple)

    def after_update(self, applied: bool) -> None:
        """Count the applied optimizer step; every steps_for_target_q_sync of them, the target sync."""
        self.synced = False
        if applied:
            self.updates += 1
            if self.updates % self.run_cfg.algorithm.steps_for_target_q_sync == 0:
                self.synced = True
                if self.heads is not None:
                    self.heads.sync_targets(self.run_cfg.algorithm.alpha)

    def update_metrics(self) -> dict:
        return {"updates": self.updates, "target_synced": float(self.synced)}

    def algorithm_state(self) -> dict:
        return {**super().algorithm_state(), "optimizer_updates": self.updates}

    def load_algorithm_state(self, state: dict) -> None:
        super().load_algorithm_state(state)
        self.updates = state["optimizer_updates"]
