"""Wrap a GPTModel for training and run one optimizer step through Megatron's schedules.

Losses are per-token: a micro-batch's loss function returns
``(loss_sum, num_tokens, report)`` and Megatron divides the accumulated
gradients by the global token count (all micro-batches, all DP ranks), so the
update does not depend on micro-batch count or data-parallel size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func

from autorlhf_nemo.config.schema import RootConfig
from autorlhf_nemo.parallel.runtime import compute_device
from autorlhf_nemo.training.batching import to_device


def wrap_for_training(model, cfg: RootConfig) -> DistributedDataParallel:
    """Megatron DDP around ``model`` (grad buffers, DP all-reduce or reduce-scatter)."""
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )
    ddp = DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model)
    model.config.no_sync_func = ddp.no_sync
    model.config.finalize_model_grads_func = finalize_model_grads
    return ddp


def build_optimizer(ddp_model, cfg: RootConfig, lr: float | None = None):
    """Megatron optimizer (Adam or SGD; distributed optimizer if configured); ``lr``
    replaces ``cfg.train.lr`` (e.g. the randomwalks pretraining's)."""
    t = cfg.train
    opt_config = OptimizerConfig(
        optimizer=t.optimizer,
        lr=t.lr if lr is None else lr,
        min_lr=t.min_lr,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_eps=t.adam_eps,
        sgd_momentum=0.0,
        clip_grad=t.clip_grad,
        bf16=cfg.model.params_dtype == "bfloat16",
        fp16=cfg.model.params_dtype == "float16",
        params_dtype=ddp_model.config.params_dtype,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )
    return get_megatron_optimizer(opt_config, [ddp_model])


@dataclass
class StepResult:
    """Token-weighted mean of each reported metric over the global batch."""

    metrics: dict[str, float]
    grad_norm: float | None
    update_successful: bool


def broadcast_from_last_stage(obj):
    """The last pipeline stage's ``obj`` (any picklable value) on every stage of this pipeline."""
    holder = [obj]
    dist.broadcast_object_list(holder, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                               group=parallel_state.get_pipeline_model_parallel_group())
    return holder[0]


def reduce_reports(reports: list[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Sum ``{name: tensor([sum, count])}`` over micro-batches and the DP group,
    then broadcast from the last pipeline stage; returns ``{name: sum / count}``."""
    names = sorted(reports[0]) if reports else []
    totals = None
    if parallel_state.is_pipeline_last_stage():
        stacked = torch.stack([sum(r[n].detach().double() for r in reports) for n in names]) \
            if names else torch.zeros(0, 2, dtype=torch.float64, device=compute_device())
        dist.all_reduce(stacked, group=parallel_state.get_data_parallel_group())
        totals = dict(zip(names, stacked.tolist()))
    return {n: s / max(c, 1.0) for n, (s, c) in broadcast_from_last_stage(totals).items()}


def train_step(ddp_model, optimizer, microbatches: Iterable[Any], num_microbatches: int,
               forward_step: Callable, seq_length: int, micro_batch_size: int,
               scheduler=None) -> StepResult:
    """One optimizer step over ``num_microbatches`` micro-batches (any PP schedule).

    ``forward_step(batch, model) -> (output, loss_func)`` as in Megatron-LM;
    ``loss_func(output) -> (loss_sum, num_tokens, {name: tensor([sum, count])})``.
    ``scheduler`` (Megatron's OptimizerParamScheduler) advances one step when the update
    was applied; an update skipped for non-finite gradients (fp16 loss scaling) leaves it.
    """
    ddp_model.zero_grad_buffer()
    optimizer.zero_grad()
    reports = _run_schedule(ddp_model, microbatches, num_microbatches, forward_step, seq_length,
                            micro_batch_size, forward_only=False)
    update_successful, grad_norm, _ = optimizer.step()
    if scheduler is not None and update_successful:
        scheduler.step(increment=1)
    return StepResult(reduce_reports(reports), grad_norm, update_successful)


@torch.no_grad()
def forward_only(model, microbatches: Iterable[Any], num_microbatches: int, forward_step: Callable,
                 seq_length: int, micro_batch_size: int) -> list[Any]:
    """Run the pipeline forward; returns the last stage's per-micro-batch outputs
    (whatever ``forward_step``'s loss function returns with ``non_loss_data``),
    an empty list on other stages."""
    return _run_schedule(model, microbatches, num_microbatches, forward_step, seq_length,
                         micro_batch_size, forward_only=True)


def _run_schedule(model, microbatches, num_microbatches, forward_step, seq_length, micro_batch_size,
                  forward_only: bool):
    """Megatron's pipeline schedule for this layout (no pipelining, 1F1B, ...). Each
    micro-batch is moved to this rank's device as the schedule takes it (a no-op for
    batches made there, e.g. from generations): the one place training data crosses."""
    device = compute_device()
    return get_forward_backward_func()(
        forward_step_func=lambda data_iter, m: forward_step(to_device(next(data_iter), device), m),
        data_iterator=iter(microbatches),
        model=[model],
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
        collect_non_loss_data=forward_only,
    )
