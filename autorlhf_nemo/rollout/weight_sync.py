"""Learner -> generator weights, between any two layouts (rollout.placement=split).

Route: a broadcast of each learner shard over a subgroup ``[sender] + generator ranks``.
The senders are the TP x PP ranks of learner data-parallel replica 0; each flattens its
shards into one buffer per dtype (a snapshot: taken between optimizer steps, so an update
never races the sync) and broadcasts it; every generator rank receives every sender's buffer
and copies out the part of each tensor that falls into its own TP slice, casting to its dtype
on the way (fp32 learner -> bf16 generator). Only the learner ranks that send and the
generator ranks take part; the other learner ranks go on.

Why not ``megatron.core.resharding.swap_model_weights`` (megatron-core 0.16): every rank of
the world must join each of its calls (the learners' other DP replicas too, with a placeholder
model), it does not convert dtypes (an fp32 source into a bf16 target kills the receiver), and
its gloo copy service needs a CPU patch; measured on this CPU it was no faster than this
broadcast (DESIGN.md).

Tensor-parallel layouts are read from Megatron's parameter attributes: a TP parameter is
split along ``partition_dim`` in ``partition_stride`` interleaved blocks (2 for SwiGLU's fc1,
whose rows on each rank are [gate part; up part]); the others are replicated (sent by TP rank 0).
Layers are matched by their global number, so any PP split maps onto the generator's PP 1.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from autorlhf_nemo.parallel.placement import GENERATOR

_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor a sender sends: its global name, local shape and TP split."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    partition_dim: int | None   # None: replicated over TP
    stride: int
    tp_rank: int
    tp_size: int


def global_name(model, local_name: str) -> str:
    """The parameter's name with its layer index global (a PP stage numbers its layers from 0)."""
    match = _LAYER.fullmatch(local_name)
    if not match:
        return local_name
    layer = model.decoder.layers[int(match.group(1))].layer_number - 1
    return f"decoder.layers.{layer}.{match.group(2)}"


def _is_tp(param) -> bool:
    return bool(getattr(param, "tensor_model_parallel", False))


def sent_tensors(model) -> list[tuple[TensorInfo, torch.Tensor]]:
    """(info, tensor) of what this learner rank sends: its TP shards, and replicated tensors on TP rank 0."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    out = []
    for name, param in model.named_parameters():
        if not _is_tp(param) and tp_rank != 0:
            continue
        dim = param.partition_dim if _is_tp(param) else None
        stride = getattr(param, "partition_stride", 1) if _is_tp(param) else 1
        out.append((TensorInfo(global_name(model, name), tuple(param.shape), param.dtype, dim, stride,
                               tp_rank if dim is not None else 0, tp_size if dim is not None else 1), param))
    return out


def copy_overlap(target: torch.Tensor, source: torch.Tensor, info: TensorInfo, tp_rank: int, tp_size: int) -> int:
    """Copy into ``target`` (this generator rank's slice: rank ``tp_rank`` of ``tp_size``) the part of
    the full tensor that ``source`` (the sender's shard, described by ``info``) holds; returns the
    number of elements copied. Block b of ``stride`` interleaved blocks along ``partition_dim``:
    source rows [r*n/R, (r+1)*n/R) of that block's n rows, target rows [j*n/g, (j+1)*n/g)."""
    if info.partition_dim is None:
        if target.shape != source.shape:
            raise RuntimeError(f"weight sync: {info.name} is replicated on the learner with shape {tuple(source.shape)} "
                               f"but {tuple(target.shape)} on the generator")
        target.copy_(source)
        return target.numel()
    dim, stride = info.partition_dim, info.stride
    block = source.shape[dim] // stride * info.tp_size  # rows of one logical block in the full tensor
    src_rows, dst_rows = block // info.tp_size, block // tp_size
    copied = 0
    for b in range(stride):
        s0, d0 = info.tp_rank * src_rows, tp_rank * dst_rows
        lo, hi = max(s0, d0), min(s0 + src_rows, d0 + dst_rows)
        if lo < hi:
            piece = source.narrow(dim, b * src_rows + lo - s0, hi - lo)
            target.narrow(dim, b * dst_rows + lo - d0, hi - lo).copy_(piece)
            copied += piece.numel()
    return copied


class WeightSync:
    """Collective over each sender's group at construction (the senders and every generator
    rank); then ``sync`` is called by the sending learner ranks and every generator rank after
    each policy update whose weights the generators need (other learner ranks may call it: it
    returns). A sender's broadcasts may be left running (``async_op``): its buffers are a
    snapshot of the weights, so the optimizer may step meanwhile; ``wait`` ends them."""

    def __init__(self, placement, links, model, device: torch.device):
        """``links``: the placement's RolloutLinks; ``model``: this rank's GPTModel (the learner's
        policy trunk or the generator's copy)."""
        self.model, self.device = model, device
        self.receiving = placement.role(dist.get_rank()) == GENERATOR
        self.senders, self.groups = links.senders, links.sync_groups
        self.sending = dist.get_rank() in self.senders
        self.infos = {}  # sender -> [TensorInfo], exchanged once
        for sender in self.senders:
            if self.sending and sender == dist.get_rank():
                payload = [[info for info, _ in sent_tensors(model)]]
            elif self.receiving:
                payload = [None]
            else:
                continue
            dist.broadcast_object_list(payload, src=sender, group=self.groups[sender])
            self.infos[sender] = payload[0]
        # sender -> {dtype: indices of its tensors}: one buffer per dtype, in this order on both sides
        self.buffers = {sender: self._by_dtype(infos) for sender, infos in self.infos.items()}
        self.seconds, self.bytes = 0.0, 0
        self.checked = False
        self.pending = []  # (work, buffer) of a sender's unfinished broadcasts

    @staticmethod
    def _by_dtype(infos: list[TensorInfo]) -> dict[torch.dtype, list[int]]:
        order: dict[torch.dtype, list[int]] = {}
        for index, info in enumerate(infos):
            order.setdefault(info.dtype, []).append(index)
        return dict(sorted(order.items(), key=lambda item: str(item[0])))

    def wait(self) -> None:
        """Finish a sender's broadcasts left running by ``sync(async_op=True)``."""
        for work, _ in self.pending:
            work.wait()
        self.pending = []

    @torch.no_grad()
    def sync(self, async_op: bool = False) -> None:
        """Send (learner replica 0) or receive (generators) the current weights; a no-op elsewhere.
        ``async_op``: a sender returns once its snapshot is taken and the broadcasts are queued."""
        if not (self.sending or self.receiving):
            return
        self.wait()
        start, moved = time.perf_counter(), 0
        if self.receiving:
            params = dict(self.model.named_parameters())
            tp_rank = parallel_state.get_tensor_model_parallel_rank()
            tp_size = parallel_state.get_tensor_model_parallel_world_size()
            # the first sync checks that the pieces cover each parameter exactly once (the geometry never changes)
            written = None if self.checked else {name: torch.zeros(p.shape, dtype=torch.int8, device=p.device)
                                                 for name, p in params.items()}
        for sender in self.senders:
            infos = self.infos.get(sender)
            if self.sending and sender == dist.get_rank():
                tensors = [t for _, t in sent_tensors(self.model)]
                for dtype, indices in self.buffers[sender].items():
                    buffer = torch.cat([tensors[i].detach().reshape(-1) for i in indices])  # a snapshot
                    work = dist.broadcast(buffer, src=sender, group=self.groups[sender], async_op=async_op)
                    if async_op:
                        self.pending.append((work, buffer))
                    moved += buffer.numel() * buffer.element_size()
            elif self.receiving:
                for dtype, indices in self.buffers[sender].items():
                    sizes = [torch.Size(infos[i].shape).numel() for i in indices]
                    buffer = torch.empty(sum(sizes), dtype=dtype, device=self.device)
                    dist.broadcast(buffer, src=sender, group=self.groups[sender])
                    moved += buffer.numel() * buffer.element_size()
                    for i, piece in zip(indices, buffer.split(sizes)):
                        info = infos[i]
                        if info.name not in params:
                            if info.name == "output_layer.weight" and self.model.share_embeddings_and_output_weights:
                                continue  # the last stage's copy of the tied embedding
                            raise RuntimeError(f"weight sync: the learner sends {info.name}, which the generator's "
                                               f"model does not have: are both built from the same model config?")
                        if (info.partition_dim is None) == _is_tp(params[info.name]):
                            raise RuntimeError(f"weight sync: {info.name} is tensor-parallel on one side only")
                        copy_overlap(params[info.name], piece.view(info.shape), info, tp_rank, tp_size)
                        if written is not None:
                            mark = torch.zeros_like(written[info.name])
                            copy_overlap(mark, torch.ones(info.shape, dtype=torch.int8, device=mark.device), info,
                                         tp_rank, tp_size)
                            written[info.name] += mark
                    buffer = piece = None  # freed before the next buffer is allocated
        if self.receiving and written is not None:
            self.checked = True
            wrong = {name: (int((count == 0).sum()), int((count > 1).sum())) for name, count in written.items()
                     if not bool((count == 1).all())}
            if wrong:
                raise RuntimeError(f"weight sync: the learner's tensors do not cover these generator parameters "
                                   f"exactly once (elements missed, elements written twice): {wrong}")
        if torch.cuda.is_available() and not async_op:
            torch.cuda.synchronize()  # the broadcasts and copies are queued on the stream: time them done
        self.seconds, self.bytes = time.perf_counter() - start, moved
