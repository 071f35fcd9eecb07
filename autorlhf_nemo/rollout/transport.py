"""Sampled batches from the generators to the learners (rollout.placement=split).

A batch travels as three tensors, sent point-to-point over ``RolloutLinks.link`` from each
generator replica's TP rank 0 to learner rank 0, in step order:

    header   float64 [8]: rows, P, R, policy version, step, the generator's seconds generating
             this batch and waiting for (and receiving) the weights it was drawn with, 0
    ints     int64 [rows, 2P + 2R + 1]: prompt ids | prompt mask | response ids | response mask | stop reason
    floats   float32 [rows, 2R]: raw log-probs | log-probs of the sampled distribution

Learner rank 0 joins the replicas' rows (padding prompts on the left, responses on the right)
and broadcasts the step's batch to every learner rank, each of which takes its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from autorlhf_nemo.generation import GenerationOutput

STOP_REASONS = ("eos", "stop", "length")
_HEADER = 8


@dataclass
class BatchInfo:
    """What came with a step's samples: the oldest policy version that drew them and the
    generators' seconds (the slowest replica's)."""

    version: int
    step: int
    generate_seconds: float
    wait_seconds: float


def pack(generation: GenerationOutput, info: BatchInfo, device) -> list[torch.Tensor]:
    """(header, ints, floats) of ``generation`` on ``device``."""
    g = generation
    rows, prompt_len = g.prompt_ids.shape
    response_len = g.response_ids.shape[1]
    header = torch.tensor([rows, prompt_len, response_len, info.version, info.step, info.generate_seconds,
                           info.wait_seconds, 0.0], dtype=torch.float64, device=device)
    stops = torch.tensor([STOP_REASONS.index(r) for r in g.stop_reasons], dtype=torch.long, device=device)
    ints = torch.cat([g.prompt_ids.long(), g.prompt_mask.long(), g.response_ids.long(), g.response_mask.long(),
                      stops[:, None]], dim=1).to(device)
    floats = torch.cat([g.logprobs.float(), g.processed_logprobs.float()], dim=1).to(device)
    return [header, ints, floats]


def unpack(header: torch.Tensor, ints: torch.Tensor, floats: torch.Tensor) -> tuple[GenerationOutput, BatchInfo]:
    _, p, r = (int(v) for v in header[:3].tolist())
    prompt_ids, prompt_mask, response_ids, response_mask, stops = ints.split([p, p, r, r, 1], dim=1)
    logprobs, processed = floats.split([r, r], dim=1)
    values = header.tolist()
    info = BatchInfo(int(values[3]), int(values[4]), values[5], values[6])
    return GenerationOutput(prompt_ids, prompt_mask, response_ids, response_mask, logprobs, processed,
                            [STOP_REASONS[int(s)] for s in stops.flatten().tolist()]), info


def _empty(header: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, p, r = (int(v) for v in header[:3].tolist())
    return (torch.empty(rows, 2 * p + 2 * r + 1, dtype=torch.long, device=header.device),
            torch.empty(rows, 2 * r, dtype=torch.float32, device=header.device))


def send(generation: GenerationOutput, info: BatchInfo, dst: int, group, device) -> list:
    """Queue the batch for learner rank ``dst``; returns (work, tensor) pairs to wait on later."""
    return [(dist.isend(t, dst=dst, group=group), t) for t in pack(generation, info, device)]


def receive(src: int, group, device) -> tuple[GenerationOutput, BatchInfo]:
    """The next batch that generator rank ``src`` sent."""
    header = torch.empty(_HEADER, dtype=torch.float64, device=device)
    dist.recv(header, src=src, group=group)
    ints, floats = _empty(header)
    dist.recv(ints, src=src, group=group)
    dist.recv(floats, src=src, group=group)
    return unpack(header, ints, floats)


def join(parts: list[tuple[GenerationOutput, BatchInfo]], pad_token_id: int) -> tuple[GenerationOutput, BatchInfo]:
    """The replicas' batches as one, rows in replica order; its version the oldest."""
    outputs = [g for g, _ in parts]
    p = max(g.prompt_ids.shape[1] for g in outputs)
    r = max(g.response_ids.shape[1] for g in outputs)

    def left(t, width, value):
        return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

    def right(t, width, value):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    joined = GenerationOutput(
        torch.cat([left(g.prompt_ids, p, pad_token_id) for g in outputs]),
        torch.cat([left(g.prompt_mask, p, 0) for g in outputs]),
        torch.cat([right(g.response_ids, r, pad_token_id) for g in outputs]),
        torch.cat([right(g.response_mask, r, 0) for g in outputs]),
        torch.cat([right(g.logprobs, r, 0.0) for g in outputs]),
        torch.cat([right(g.processed_logprobs, r, 0.0) for g in outputs]),
        [reason for g in outputs for reason in g.stop_reasons])
    infos = [i for _, i in parts]
    return joined, BatchInfo(min(i.version for i in infos), infos[0].step,
                             max(i.generate_seconds for i in infos), max(i.wait_seconds for i in infos))


def broadcast(batch: tuple[GenerationOutput, BatchInfo] | None, device) -> tuple[GenerationOutput, BatchInfo]:
    """Learner rank 0's batch on every rank of the default group (the learners')."""
    if dist.get_rank() == 0:
        header, ints, floats = pack(*batch, device)
    else:
        header = torch.empty(_HEADER, dtype=torch.float64, device=device)
    dist.broadcast(header, src=0)
    if dist.get_rank() != 0:
        ints, floats = _empty(header)
    dist.broadcast(ints, src=0)
    dist.broadcast(floats, src=0)
    return unpack(header, ints, floats)
