"""Sampling on vocab-parallel logits: every TP rank holds ``[b, V/tp]`` and the
full vocabulary is never gathered.  Collectives exchange only per-row scalars
(maxima, sums) or small candidate sets (top-k values, top-p candidates).

Processing order (as in transformers): user processors -> min_new_tokens ->
temperature -> top-k -> top-p; then greedy argmax or a Gumbel-max sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from autorlhf_nemo.ops.vocab_parallel import mask_padded_vocab

NEG_INF = float("-inf")

# processor(logits [b, V/tp], vocab_start, tokens_so_far [b, t]) -> logits [b, V/tp]
LogitsProcessor = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]
# processor(vp: VocabParallel, logits [b, V/tp], hidden [b, H], tokens_so_far [b, t]) -> logits [b, V/tp]:
# also sees the final-norm hidden state of the step on the last pipeline stage (ILQL's
# Q-guided decoding runs its heads on it); runs after the logits processors.
HiddenProcessor = Callable[["VocabParallel", torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SamplingParams:
    """How to decode. ``temperature == 0`` or ``greedy=True`` means greedy."""

    max_new_tokens: int = 32
    min_new_tokens: int = 0
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0          # 0: off
    top_p: float = 1.0      # 1.0: off
    eos_token_ids: Sequence[int] = ()
    stop_token_sequences: Sequence[Sequence[int]] = ()
    stop_strings: Sequence[str] = ()
    seed: int = 0
    # One seed per prompt row: row i draws its own noise stream, so a sample depends on
    # (seed, row seed) only, not on how rows are split over DP ranks or batched.
    row_seeds: Sequence[int] | None = None
    logits_processors: Sequence[LogitsProcessor] = field(default_factory=tuple)
    hidden_processors: Sequence[HiddenProcessor] = field(default_factory=tuple)

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0

    def changes_logits(self, step: int) -> bool:
        """Whether step ``step`` samples from anything but the raw distribution. The
        same on every TP rank (it decides which collectives run)."""
        suppress_eos = step < self.min_new_tokens and len(self.eos_token_ids) > 0
        return self.has_processors or suppress_eos or not self.is_greedy

    @property
    def has_processors(self) -> bool:
        return bool(self.logits_processors) or bool(self.hidden_processors)

    def validate(self, prompt_length: int, max_positions: int, vocab_size: int, batch_size: int) -> None:
        """Reject bad parameters before any work, naming the field and the fix."""
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if prompt_length + self.max_new_tokens > max_positions:
            problems.append(
                f"max_new_tokens={self.max_new_tokens} with a longest prompt of {prompt_length} tokens "
                f"exceeds the model's {max_positions} positions: use max_new_tokens <= "
                f"{max_positions - prompt_length} or shorter prompts")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            problems.append(f"min_new_tokens={self.min_new_tokens} must be in [0, max_new_tokens="
                            f"{self.max_new_tokens}]")
        if self.temperature < 0 or self.temperature != self.temperature:
            problems.append(f"temperature={self.temperature} must be >= 0 (0 means greedy)")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p={self.top_p} must be in (0, 1] (1 disables nucleus sampling)")
        if self.top_k < 0 or self.top_k > vocab_size:
            problems.append(f"top_k={self.top_k} must be in [0, vocab size {vocab_size}] (0 disables it)")
        bad_ids = [t for t in self.eos_token_ids if not 0 <= t < vocab_size]
        if bad_ids:
            problems.append(f"eos_token_ids {bad_ids} are outside the vocabulary [0, {vocab_size})")
        if any(len(s) == 0 for s in self.stop_token_sequences) or any(s == "" for s in self.stop_strings):
            problems.append("stop sequences must not be empty")
        if self.row_seeds is not None and len(self.row_seeds) != batch_size:
            problems.append(f"row_seeds has {len(self.row_seeds)} entries for {batch_size} prompts: "
                            "give one seed per prompt")
        if problems:
            raise ValueError("invalid sampling parameters: " + "; ".join(problems))


class VocabParallel:
    """Row-wise reductions over a TP group for logits split along the vocabulary."""

    def __init__(self, group, vocab_start: int, vocab_size: int):
        self.group = group
        self.vocab_start = vocab_start
        self.vocab_size = vocab_size  # real vocabulary (padding excluded)
        self.world = dist.get_world_size(group) if group is not None else 1

    def _all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t, op=op, group=self.group)
        return t

    def _all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)

    def mask_padding(self, logits: torch.Tensor) -> torch.Tensor:
        return mask_padded_vocab(logits, self.vocab_size, self.vocab_start)

    def log_softmax_at(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """log softmax(logits)[b, tokens[b]] over the full vocabulary. [b, V/tp], [b] -> [b]."""
        local_max = logits.max(dim=-1).values
        global_max = self._all_reduce(local_max.clone(), dist.ReduceOp.MAX)
        safe_max = torch.where(torch.isfinite(global_max), global_max, torch.zeros_like(global_max))
        sum_exp = self._all_reduce((logits - safe_max[:, None]).exp().sum(-1))
        local = tokens - self.vocab_start
        owned = (local >= 0) & (local < logits.shape[-1])
        picked = logits.gather(-1, local.clamp(0, logits.shape[-1] - 1)[:, None])[:, 0]
        token_logit = self._all_reduce(torch.where(owned, picked, torch.zeros_like(picked)))
        return token_logit - safe_max - sum_exp.log()

    def log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """log softmax over the full vocabulary, on this rank's slice. [b, V/tp] -> [b, V/tp]."""
        global_max = self._all_reduce(logits.max(dim=-1).values.clone(), dist.ReduceOp.MAX)
        shifted = logits - torch.where(torch.isfinite(global_max), global_max, torch.zeros_like(global_max))[:, None]
        return shifted - self._all_reduce(shifted.exp().sum(-1)).log()[:, None]

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Global argmax per row (lowest index on ties, as torch.argmax). [b, V/tp] -> [b]."""
        values, idx = logits.max(dim=-1)
        pairs = torch.stack([values.double(), (idx + self.vocab_start).double()], dim=-1)  # [b, 2]
        pairs = self._all_gather_cat(pairs).view(-1, self.world, 2)                  # [b, tp, 2]
        best = pairs[..., 0].max(dim=-1, keepdim=True).values
        ties = torch.where(pairs[..., 0] == best, pairs[..., 1], torch.full_like(pairs[..., 1], float("inf")))
        return ties.min(dim=-1).values.long()

    def top_k_mask(self, logits: torch.Tensor, k: int) -> torch.Tensor:
        """Keep logits >= the k-th largest over the full vocabulary."""
        local_k = min(k, logits.shape[-1])
        local_top = logits.topk(local_k, dim=-1).values
        kth = self._all_gather_cat(local_top).topk(k, dim=-1).values[:, -1:]
        return logits.masked_fill(logits < kth, NEG_INF)

    def top_p_mask(self, logits: torch.Tensor, top_p: float) -> torch.Tensor:
        """Nucleus: keep the most probable tokens whose preceding mass is < top_p.

        Each rank contributes its C largest probabilities; if the nucleus could
        reach past some rank's C-th candidate, C doubles (exact, usually one round;
        deciding that asks the host one bool per round). Without TP the whole
        vocabulary is sorted at once: exact, and no host round trip.
        """
        probs = self._softmax(logits)
        shard = logits.shape[-1]
        candidates = 64 if self.world > 1 else shard
        while True:
            c = min(candidates, shard)
            local_top = probs.topk(c, dim=-1).values                          # [b, c]
            merged = self._all_gather_cat(local_top).sort(dim=-1, descending=True).values
            before = merged.cumsum(-1) - merged                              # mass strictly before
            kept = before < top_p
            threshold = torch.where(kept, merged, torch.full_like(merged, float("inf"))).min(-1).values
            if c == shard:  # every rank contributed its whole shard: exact
                return logits.masked_fill(probs < threshold[:, None], NEG_INF)
            # Exact if every rank's smallest contributed candidate is below the threshold.
            smallest = self._all_gather_cat(local_top[:, -1:])               # [b, tp]
            exhausted = (smallest >= threshold[:, None]).any().to(torch.int32).view(1)
            if not bool(self._all_reduce(exhausted, dist.ReduceOp.MAX)):
                return logits.masked_fill(probs < threshold[:, None], NEG_INF)
            candidates *= 2

    def _softmax(self, logits: torch.Tensor) -> torch.Tensor:
        global_max = self._all_reduce(logits.max(dim=-1).values.clone(), dist.ReduceOp.MAX)
        exp = (logits - global_max[:, None]).exp()
        return exp / self._all_reduce(exp.sum(-1))[:, None]

    def gumbel_argmax(self, logits: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """A sample from softmax(logits): argmax(logits + Gumbel noise).

        The noise is drawn for the whole (padded) vocabulary on every rank and
        sliced, so the sample does not depend on the TP size. ``generators``: one
        for the whole batch, or one per row.
        """
        b, shard = logits.shape
        if len(generators) == 1:
            uniform = torch.rand(b, shard * self.world, generator=generators[0], dtype=torch.float32,
                                 device=generators[0].device)
        else:
            uniform = torch.stack([torch.rand(shard * self.world, generator=g, dtype=torch.float32,
                                              device=g.device) for g in generators])
        uniform = uniform[:, self.vocab_start:self.vocab_start + shard].to(logits.device)
        exponential = (-torch.log(uniform.clamp_min(1e-20))).clamp_min(1e-20)   # Exp(1) > 0
        gumbel = -torch.log(exponential)
        return self.argmax(logits.float() + gumbel)


def process_logits(vp: VocabParallel, raw: torch.Tensor, params: SamplingParams, tokens: torch.Tensor,
                   step: int, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Processed vocab-parallel logits [b, V/tp] (fp32) for sampling step ``step``;
    ``hidden`` [b, H]: the step's final hidden state, for ``params.hidden_processors``."""
    logits = raw
    for processor in params.logits_processors:
        logits = processor(logits, vp.vocab_start, tokens)
    for processor in params.hidden_processors:
        logits = processor(vp, logits, hidden, tokens)
    if step < params.min_new_tokens:
        stop_ids = list(params.eos_token_ids)
        local = [t - vp.vocab_start for t in stop_ids if 0 <= t - vp.vocab_start < logits.shape[-1]]
        if local:
            logits = logits.clone()
            logits[:, local] = NEG_INF
    if params.is_greedy:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if params.top_k > 0:
        logits = vp.top_k_mask(logits, params.top_k)
    if params.top_p < 1.0:
        logits = vp.top_p_mask(logits, params.top_p)
    return logits
