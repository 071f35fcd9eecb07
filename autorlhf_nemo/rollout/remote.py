"""The learner's side of a split placement: the generators' batches in, the weights out.

    start(step)          learner rank 0 tells the generators the run's first step; the
                         sending learner ranks send the current weights (version ``step``)
    receive(step)        step's samples, on every learner rank (transport.broadcast)
    after_update(done)   send version ``done`` when a later step will need it
                         (steps.learner_sends_after), without waiting for the generators

Learner rank 0 posts its receives ahead, in the order the generators send: a generator sends
step u's batch after it takes version u - S, so the receives of steps up to done - 1 + S are
posted before version ``done`` goes out and the one of step done + S right after. Every
rank then issues its point-to-point and broadcast operations in the same order, which NCCL
needs when operations on different communicators may not run concurrently.
"""

from __future__ import annotations

import torch.distributed as dist

from autorlhf_nemo.rollout import steps, transport
from autorlhf_nemo.rollout.generator_loop import LEARNER_ZERO, exchange_roles
from autorlhf_nemo.rollout.weight_sync import WeightSync


class RemoteRollouts:
    """Collective over the world's links at construction (with the generators' run_generator)."""

    def __init__(self, cfg, runtime, gpt, pad_token_id: int, widths: tuple[int, int]):
        """``widths``: generator_loop.message_widths."""
        self.cfg, self.device, self.pad_token_id, self.widths = cfg, runtime.device, pad_token_id, widths
        self.links = runtime.links
        self.staleness, self.total = cfg.rollout.max_staleness, cfg.train.total_steps
        self.sync = WeightSync(runtime.placement, runtime.links, gpt, runtime.device)
        self.first = dist.get_rank() == LEARNER_ZERO
        # the generator rank that sends each replica's batches (its TP rank 0), in replica order
        self.sources = sorted((replica, rank) for rank, replica, tp_rank in exchange_roles(self.links)
                              if tp_rank == 0) if self.first else []
        a = cfg.algorithm
        self.rows = a.prompts_per_step * a.samples_per_prompt // runtime.placement.generator_replicas  # per replica
        self.pending, self.next_post = {}, 0  # learner rank 0: step -> posted receives, one per replica

    def _post_until(self, step: int) -> None:
        """Learner rank 0: post the receives of every step up to ``step`` not yet posted."""
        if not self.first:
            return
        while self.next_post <= min(step, self.total - 1):
            self.pending[self.next_post] = [transport.PendingBatch(rank, self.links.link, self.device, self.rows,
                                                                   self.widths) for _, rank in self.sources]
            self.next_post += 1

    def start(self, step: int) -> None:
        if self.first:
            dist.broadcast_object_list([step], src=LEARNER_ZERO, group=self.links.link)
        self.sync.sync()
        self.next_post = step
        self._post_until(step + self.staleness)

    def receive(self, step: int):
        """(GenerationOutput of the whole step, transport.BatchInfo) on every learner rank."""
        batch = None
        if self.first:
            self._post_until(step)
            batch = transport.join([pending.wait() for pending in self.pending.pop(step)], self.pad_token_id)
            if batch[1].step != step:
                raise RuntimeError(f"split rollout: the generators sent step {batch[1].step}'s samples "
                                   f"when the learner is at step {step}")
        return transport.broadcast(batch, self.device)

    def after_update(self, steps_done: int) -> None:
        """Queue version ``steps_done`` for the generators when a later step needs it."""
        if not steps.learner_sends_after(steps_done, self.staleness, self.total):
            return
        self._post_until(steps_done - 1 + self.staleness)
        self.sync.sync(async_op=True)
        self._post_until(steps_done + self.staleness)

    def close(self) -> None:
        self.sync.wait()
