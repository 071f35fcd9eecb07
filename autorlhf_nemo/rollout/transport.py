"""Sampled batches from the generators to the learners (rollout.placement=split).

A batch travels as three tensors, sent point-to-point over ``RolloutLinks.link`` from each
generator replica's TP rank 0 to learner rank 0, in step order:

    header   float64 [8]: rows, P, R, policy version, step, the generator's seconds generating
             this batch and waiting for (and receiving) the weights it was drawn with, 0
    ints     int64 [rows, 2W + 2M + 1]: prompt ids | prompt mask | response ids | response mask | stop reason
    floats   float32 [rows, 2M]: raw log-probs | log-probs of the sampled distribution

padded to the widths W (the task's longest prompt) and M (max_new_tokens), so every message has
a fixed shape and learner rank 0 can post its receives ahead (``post_receive``), in the order the
generators send (remote.py); the header's P and R say which columns are real. Learner rank 0
joins the replicas' rows and broadcasts the step's batch to every learner rank, each of which
takes its own rows.
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


def _left(t: torch.Tensor, width: int, value) -> torch.Tensor:
    return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)


def _right(t: torch.Tensor, width: int, value) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


def pack(generation: GenerationOutput, info: BatchInfo, device, widths: tuple[int, int] | None = None
         ) -> list[torch.Tensor]:
    """(header, ints, floats) of ``generation`` on ``device``, prompts and responses padded to
    ``widths`` (prompt W, response M; None: their own)."""
    g = generation
    rows, prompt_len = g.prompt_ids.shape
    response_len = g.response_ids.shape[1]
    w, m = widths or (prompt_len, response_len)
    if prompt_len > w or response_len > m:
        raise RuntimeError(f"split rollout: a batch of prompts {prompt_len} and responses {response_len} tokens wide "
                           f"does not fit the messages' widths {w} and {m}")
    header = torch.tensor([rows, prompt_len, response_len, info.version, info.step, info.generate_seconds,
                           info.wait_seconds, 0.0], dtype=torch.float64, device=device)
    stops = torch.tensor([STOP_REASONS.index(r) for r in g.stop_reasons], dtype=torch.long, device=device)
    ints = torch.cat([_left(g.prompt_ids.long(), w, 0), _left(g.prompt_mask.long(), w, 0),
                      _right(g.response_ids.long(), m, 0), _right(g.response_mask.long(), m, 0),
                      stops[:, None]], dim=1).to(device)
    floats = torch.cat([_right(g.logprobs.float(), m, 0.0), _right(g.processed_logprobs.float(), m, 0.0)],
                       dim=1).to(device)
    return [header, ints, floats]


def empty(rows: int, widths: tuple[int, int], device) -> list[torch.Tensor]:
    """Receive buffers (header, ints, floats) for ``rows`` rows padded to ``widths``."""
    w, m = widths
    return [torch.empty(_HEADER, dtype=torch.float64, device=device),
            torch.empty(rows, 2 * w + 2 * m + 1, dtype=torch.long, device=device),
            torch.empty(rows, 2 * m, dtype=torch.float32, device=device)]


def unpack(header: torch.Tensor, ints: torch.Tensor, floats: torch.Tensor) -> tuple[GenerationOutput, BatchInfo]:
    """The batch in (header, ints, floats): the header's P and R real columns of the padded widths."""
    _, p, r = (int(v) for v in header[:3].tolist())
    m = floats.shape[1] // 2
    w = (ints.shape[1] - 1 - 2 * m) // 2
    prompt_ids, prompt_mask, response_ids, response_mask, stops = ints.split([w, w, m, m, 1], dim=1)
    logprobs, processed = floats.split([m, m], dim=1)
    values = header.tolist()
    info = BatchInfo(int(values[3]), int(values[4]), values[5], values[6])
    return GenerationOutput(prompt_ids[:, w - p:], prompt_mask[:, w - p:], response_ids[:, :r], response_mask[:, :r],
                            logprobs[:, :r], processed[:, :r],
                            [STOP_REASONS[int(s)] for s in stops.flatten().tolist()]), info


def send(generation: GenerationOutput, info: BatchInfo, dst: int, group, device, widths: tuple[int, int]) -> list:
    """Queue the batch for learner rank ``dst``; returns (work, tensor) pairs to wait on later."""
    return [(dist.isend(t, dst=dst, group=group), t) for t in pack(generation, info, device, widths)]


class PendingBatch:
    """A posted receive of one batch from generator rank ``src`` (``transport.send``'s counterpart)."""

    def __init__(self, src: int, group, device, rows: int, widths: tuple[int, int]):
        self.tensors = empty(rows, widths, device)
        self.works = [dist.irecv(t, src=src, group=group) for t in self.tensors]

    def wait(self) -> tuple[GenerationOutput, BatchInfo]:
        for work in self.works:
            work.wait()
        return unpack(*self.tensors)


def join(parts: list[tuple[GenerationOutput, BatchInfo]], pad_token_id: int) -> tuple[GenerationOutput, BatchInfo]:
    """The replicas' batches as one, rows in replica order; its version the oldest."""
    outputs = [g for g, _ in parts]
    infos = [i for _, i in parts]
    if len({i.step for i in infos}) > 1:
        raise RuntimeError(f"split rollout: the generator replicas sent batches of different steps "
                           f"{[i.step for i in infos]}")
    p = max(g.prompt_ids.shape[1] for g in outputs)
    r = max(g.response_ids.shape[1] for g in outputs)
    joined = GenerationOutput(
        torch.cat([_left(g.prompt_ids, p, pad_token_id) for g in outputs]),
        torch.cat([_left(g.prompt_mask, p, 0) for g in outputs]),
        torch.cat([_right(g.response_ids, r, pad_token_id) for g in outputs]),
        torch.cat([_right(g.response_mask, r, 0) for g in outputs]),
        torch.cat([_right(g.logprobs, r, 0.0) for g in outputs]),
        torch.cat([_right(g.processed_logprobs, r, 0.0) for g in outputs]),
        [reason for g in outputs for reason in g.stop_reasons])
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
        rows, p, r = (int(v) for v in header[:3].tolist())
        _, ints, floats = empty(rows, (p, r), device)
    dist.broadcast(ints, src=0)
    dist.broadcast(floats, src=0)
    return unpack(header, ints, floats)
