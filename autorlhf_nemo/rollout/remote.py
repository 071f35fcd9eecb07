"""The learner's side of a split placement: the generators' batches in, the weights out.

    start(step)          learner rank 0 tells the generators the run's first step; the
                         sending learner ranks send the current weights (version ``step``)
    receive(step)        step's samples, on every learner rank (transport.broadcast)
    after_update(done)   send version ``done`` when a later step will need it
                         (steps.learner_sends_after), without waiting for the generators
"""

from __future__ import annotations

import time

import torch.distributed as dist

from autorlhf_nemo.rollout import steps, transport
from autorlhf_nemo.rollout.generator_loop import LEARNER_ZERO, exchange_roles
from autorlhf_nemo.rollout.weight_sync import WeightSync


class RemoteRollouts:
    """Collective over the world's links at construction (with the generators' run_generator)."""

    def __init__(self, cfg, runtime, gpt, pad_token_id: int):
        self.cfg, self.device, self.pad_token_id = cfg, runtime.device, pad_token_id
        self.links = runtime.links
        self.sync = WeightSync(runtime.placement, runtime.links, gpt, runtime.device)
        self.first = dist.get_rank() == LEARNER_ZERO
        # the generator rank that sends each replica's batches (its TP rank 0), in replica order
        self.sources = sorted((replica, rank) for rank, replica, tp_rank in exchange_roles(self.links)
                              if tp_rank == 0) if self.first else []

    def start(self, step: int) -> None:
        if self.first:
            dist.broadcast_object_list([step], src=LEARNER_ZERO, group=self.links.link)
        self.sync.sync()

    def receive(self, step: int):
        """(GenerationOutput of the whole step, transport.BatchInfo) on every learner rank."""
        batch = None
        if self.first:
            batch = transport.join([transport.receive(rank, self.links.link, self.device)
                                    for _, rank in self.sources], self.pad_token_id)
            if batch[1].step != step:
                raise RuntimeError(f"split rollout: the generators sent step {batch[1].step}'s samples "
                                   f"when the learner is at step {step}")
        return transport.broadcast(batch, self.device)

    def after_update(self, steps_done: int) -> float:
        """Seconds spent queuing the weights (0 when none are sent)."""
        if not steps.learner_sends_after(steps_done, self.cfg.rollout.max_staleness, self.cfg.train.total_steps):
            return 0.0
        began = time.perf_counter()
        self.sync.sync(async_op=True)
        return time.perf_counter() - began

    def close(self) -> None:
        self.sync.wait()
