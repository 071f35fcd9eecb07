"""ILQL as a model module (algorithms/base.py's OnlineModel, trained offline by trainer.py):
the policy with V, Q and target Q heads on the last stage (models/ilql.py), no reference.

    learn         one optimizer step on a batch of offline rows (data/offline.collate), then,
                  every steps_for_target_q_sync optimizer steps, target <- alpha q + (1 - alpha) target
    forward_step  ILQL's loss (loss.py) at the action positions only
    guidance      Q-guided decoding: log_softmax(logits) + beta (min_i Qbar_i - V)

The target sync counts optimizer steps (applied updates), kept in the checkpoint.
"""

from __future__ import annotations

import torch

from autorlhf_nemo.algorithms.base import OnlineModel
from autorlhf_nemo.algorithms.ilql.loss import ilql_loss
from autorlhf_nemo.algorithms.step import megatron_loss
from autorlhf_nemo.models.ilql import ILQLPolicyModel
from autorlhf_nemo.training.batching import data_parallel_microbatches
from autorlhf_nemo.training.engine import train_step


class QGuidance:
    """A hidden processor (generation.sampling): scores = log_softmax(logits) + beta (min_i Qbar_i(s, .) - V(s))
    on this TP rank's vocabulary slice [b, V/tp]; top-k / top-p / temperature / greedy follow."""

    def __init__(self, heads, beta: float):
        self.heads, self.beta = heads, beta

    def __call__(self, vp, logits, hidden, tokens):
        return vp.log_softmax(logits) + self.beta * self.heads.advantage(hidden)


class ILQLModel(OnlineModel):
    def __init__(self, cfg, runtime, init_weights):
        super().__init__(cfg, runtime, init_weights)
        self.updates = 0  # optimizer steps applied: the target sync's clock

    def build_policy(self, gpt):
        a, m = self.run_cfg.algorithm, self.run_cfg.model
        return ILQLPolicyModel(gpt, m.vocab_size, a.width(m.hidden_size), a.two_qs, a.head_seed)

    def caches_trunk(self) -> bool:
        return False  # every offline batch is trained on once: nothing to reuse

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

    def learn(self, batch: dict, generator: torch.Generator | None = None) -> tuple[dict, list[dict]]:
        """One optimizer step on this DP rank's rows ``batch``; then the target sync when due.
        Returns (metrics, [the update's row])."""
        a = self.run_cfg.algorithm
        micro = data_parallel_microbatches(batch, 0, 1, self.micro_batch_size)
        lr = self.scheduler.get_lr(self.optimizer.param_groups[0])
        result = train_step(self.policy, self.optimizer, micro, len(micro), self.forward_step(),
                            batch["tokens"].shape[1], self.micro_batch_size, scheduler=self.scheduler)
        synced = False
        if result.update_successful:
            self.updates += 1
            if self.updates % a.steps_for_target_q_sync == 0:
                synced = True
                if self.heads is not None:
                    self.heads.sync_targets(a.alpha)
        self._weights_changed([p for p in self.policy.module.gpt.parameters() if p.requires_grad])
        metrics = {**result.metrics, "lr": lr, "grad_norm": float(result.grad_norm or 0.0),
                   "updates": self.updates, "target_synced": float(synced)}
        return metrics, [{"epoch": 0, "minibatch": 0, "staleness": 0, **metrics}]

    def algorithm_state(self) -> dict:
        return {**super().algorithm_state(), "optimizer_updates": self.updates}

    def load_algorithm_state(self, state: dict) -> None:
        super().load_algorithm_state(state)
        self.updates = state["optimizer_updates"]
