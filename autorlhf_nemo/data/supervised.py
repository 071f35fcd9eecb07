"""SFT's and DPO's data: a source loaded (loader.py), encoded within data.max_length (encode.py),
packed where asked, and collated into model batches.

A sequence is ``(ids, mask)``: ``mask[i]`` is 1 where ``ids[i]`` is trained (predicted from the
tokens before it); ``mask[0]`` is always 0, so nothing is ever predicted across the border of
two packed samples. An SFT row is a list of sequences (one, or several packed); a DPO row is a
:class:`PairRow`.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from autorlhf_nemo.data.encode import encode_prompt, encode_rows
from autorlhf_nemo.data.loader import DataError, extract_prompt, load_data_splits

# the types each supervised algorithm trains on (loader.TYPES)
ALLOWED = {"sft": ("prompt_completion", "chat", "language_modeling"),
           "dpo": ("preference", "implicit_preference")}

Encoded = tuple[list[int], list[int]]


@dataclass
class PairRow:
    """A preference pair; ``reference``: the reference's (chosen, rejected) log-prob sums once known."""

    chosen: Encoded
    rejected: Encoded
    reference: Optional[tuple[float, float]] = None


@dataclass
class SupervisedData:
    train: list                   # SFT: lists of sequences; DPO: PairRows
    eval: list                    # the held-out rows, alike (empty: nothing held out)
    kind: str                     # loader.TYPES key
    source: str
    counts: dict[str, dict]       # {"train"|"eval": encode_rows' counts}, plus "packed" rows when packing
    eval_prompts: list[tuple[str, list[int]]] = field(default_factory=list)  # held-out (shown text, prompt ids)

    def summary(self) -> str:
        """One line: the rows kept and what fitting them into max_length did."""
        parts = []
        for split in ("train", "eval"):
            c = self.counts.get(split)
            if c:
                dropped = ", ".join(f"{n} {k}" for k, n in c.items() if n and k != "kept") or "none dropped"
                parts.append(f"{split} {c['kept']} rows ({dropped})")
        packed = f"; packed into {self.counts['packed']} rows" if "packed" in self.counts else ""
        return f"dataset {self.source} ({self.kind}): {'; '.join(parts)}{packed}"


def load_supervised(algorithm: str, data_cfg, tokenizer, max_length: int, seed: int,
                    source: Any = None) -> SupervisedData:
    """The rows of ``source`` (default: data.path) for ``algorithm`` (sft | dpo), within
    ``max_length`` tokens; raises DataError naming the source when no row is left."""
    d = data_cfg
    source = source if source is not None else d.path
    if source is None:
        raise DataError(f"algorithm={algorithm} trains on a dataset: set data.path=<file or hub name> "
                        f"(or pass autorlhf_nemo.train(..., dataset=...))")
    splits = load_data_splits(d, source, seed, ALLOWED[algorithm])
    train = encode_rows(tokenizer, splits.train, splits.type, max_length)
    counts = {"train": train.counts}
    if not train.rows:
        raise DataError(f"{splits.source}: no training row fits data.max_length={max_length} "
                        f"({_dropped(train.counts)}): raise data.max_length or train.seq_length")
    held_out = encode_rows(tokenizer, splits.eval, splits.type, max_length) if splits.eval is not None else None
    if held_out is not None:
        counts["eval"] = held_out.counts
    rows = [_row(algorithm, r) for r in train.rows]
    eval_rows = [_row(algorithm, r) for r in held_out.rows] if held_out else []
    if algorithm == "sft" and d.pack:
        rows = pack_sequences([r[0] for r in rows], max_length)
        eval_rows = pack_sequences([r[0] for r in eval_rows], max_length) if eval_rows else []
        counts["packed"] = len(rows)
    prompts = _eval_prompts(tokenizer, splits.eval, splits.type) if splits.eval is not None else []
    return SupervisedData(rows, eval_rows, splits.type, splits.source, counts, prompts)


def _dropped(counts: dict) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n and k != "kept") or "none"


def _row(algorithm: str, encoded: dict):
    if algorithm == "dpo":
        return PairRow(encoded["chosen"], encoded["rejected"])
    return [encoded["sequence"]]


def _eval_prompts(tokenizer, table, kind: str) -> list[tuple[str, list[int]]]:
    """(text shown, prompt ids) of each held-out row that has a prompt (text rows have none)."""
    out = []
    for row in table:
        if kind == "implicit_preference":
            prompt = extract_prompt(row["chosen"], row["rejected"])[0]
        elif kind == "chat":
            turns = row["messages"]
            last = max(i for i, m in enumerate(turns) if m["role"] == "assistant")
            prompt = turns[:last]
        else:
            prompt = row.get("prompt")
        if prompt:
            shown = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            out.append((shown, encode_prompt(tokenizer, prompt)))
    return out


def pack_sequences(sequences: Sequence[Encoded], max_length: int) -> list[list[Encoded]]:
    """Best-fit decreasing: the longest sequence first, each into the fullest row it fits in
    (a new row when none has room). Deterministic; every row holds at most ``max_length`` tokens."""
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i][0]), i))
    rows: list[list[Encoded]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), ascending
    for i in order:
        n = len(sequences[i][0])
        if n > max_length:
            raise ValueError(f"a sequence of {n} tokens does not fit max_length={max_length}")
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, index = free.pop(at)
        else:
            room, index = max_length, len(rows)
            rows.append([])
        rows[index].append(sequences[i])
        if room - n:
            bisect.insort(free, (room - n, index))
    return rows


def fingerprint(rows: Sequence[PairRow]) -> str:
    """A digest of the pairs' token ids: what precomputed reference log-probs belong to."""
    digest = hashlib.sha256()
    for row in rows:
        for ids, mask in (row.chosen, row.rejected):
            digest.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
            digest.update(torch.tensor(mask, dtype=torch.int8).numpy().tobytes())
    return digest.hexdigest()


def collate_sequences(rows: Sequence[Sequence[Encoded]], pad_token_id: int, pad_to_multiple_of: int = 1,
                      use_te: bool | None = None) -> dict[str, torch.Tensor]:
    """A batch of b rows, each one or several (packed) sequences laid end to end, right-padded to
    S = the longest row rounded up to ``pad_to_multiple_of``; R = the most trained tokens in a row:

        tokens [b, S]; position_ids [b, S]: restarting at 0 with every sequence (Megatron's RoPE
            ignores them and rotates by the position in the row: the same attention, RoPE being
            relative and the mask block-diagonal)
        attention_mask: local spec [b, 1, S, S], True = blocked: causal within each sequence
            (block-diagonal; padding attends only to padding); Transformer Engine [b, 1, 1, S] on
            padding for rows of one sequence, or, when a row holds several, none and
            ``cu_seqlens`` [b, K + 1] (each row's sequence starts, the padding as one more
            sequence, -1 after the end) for the packed (THD) format: models/packing.py
        response_index [b, R]: the position predicting each trained token (its own - 1)
        response_ids [b, R]; response_mask [b, R] float (1 = a trained token)

    The field names are those of algorithms/batch.py, so algorithms/step.py's forward step
    computes the log-probs of exactly the trained tokens."""
    from autorlhf_nemo.models.gpt import attention_mask, transformer_engine_available

    if not rows:
        raise ValueError("collate_sequences needs at least one row")
    use_te = transformer_engine_available() if use_te is None else use_te
    b = len(rows)
    lengths = [sum(len(ids) for ids, _ in row) for row in rows]
    width = max(lengths)
    width += -width % pad_to_multiple_of
    trained = [[i for i, m in enumerate(m for _, mask in row for m in mask) if m] for row in rows]
    r = max(1, max(len(t) for t in trained))
    tokens = torch.full((b, width), pad_token_id, dtype=torch.long)
    positions = torch.zeros(b, width, dtype=torch.long)
    segments = torch.zeros(b, width, dtype=torch.long)  # 0: padding, k >= 1: the row's k-th sequence
    index = torch.zeros(b, r, dtype=torch.long)
    mask = torch.zeros(b, r)
    starts = []
    for i, row in enumerate(rows):
        offset, row_starts = 0, []
        for k, (ids, seq_mask) in enumerate(row, start=1):
            if seq_mask and seq_mask[0]:
                raise ValueError(f"row {i} sequence {k}: its first token is trained, but nothing predicts it")
            n = len(ids)
            tokens[i, offset:offset + n] = torch.tensor(ids)
            positions[i, offset:offset + n] = torch.arange(n)
            segments[i, offset:offset + n] = k
            row_starts.append(offset)
            offset += n
        row_starts.append(offset)
        if offset < width:
            row_starts.append(width)
        starts.append(row_starts)
        t = torch.tensor(trained[i], dtype=torch.long)
        index[i, :len(t)] = t - 1
        mask[i, :len(t)] = 1
    response_ids = tokens.gather(1, index + 1) * mask.long() + pad_token_id * (1 - mask.long())
    batch = {"tokens": tokens, "position_ids": positions, "response_index": index,
             "response_ids": response_ids, "response_mask": mask}
    packed = any(len(row) > 1 for row in rows)
    if use_te and packed:
        k = max(len(s) for s in starts)
        batch["cu_seqlens"] = torch.tensor([s + [-1] * (k - len(s)) for s in starts], dtype=torch.int32)
        batch["attention_mask"] = None
    elif use_te:
        batch["attention_mask"] = attention_mask(segments > 0, use_te=True)
    else:
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        same = segments[:, :, None] == segments[:, None, :]
        batch["attention_mask"] = ~(causal[None] & same).unsqueeze(1)
    return batch


def collate_pairs(rows: Sequence[PairRow], pad_token_id: int, pad_to_multiple_of: int = 1,
                  use_te: bool | None = None) -> dict[str, torch.Tensor]:
    """collate_sequences of chosen_0, rejected_0, chosen_1, ... (a pair never splits across an
    even micro-batch), with ``ref_logps`` [2b] where every row's reference is known."""
    batch = collate_sequences([[s] for row in rows for s in (row.chosen, row.rejected)], pad_token_id,
                              pad_to_multiple_of, use_te)
    if all(row.reference is not None for row in rows):
        batch["ref_logps"] = torch.tensor([v for row in rows for v in row.reference], dtype=torch.float32)
    return batch
