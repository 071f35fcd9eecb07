"""What every online algorithm computes from a step's generations: rows, log-probs of
the sampled distribution, rewards per sample.

Per-token tensors are [b, R] over the response (mask = response_mask). Model forwards
run through Megatron's schedules, so they exist on the last pipeline stage only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core import parallel_state

from autorlhf_nemo.generation import GenerationOutput
from autorlhf_nemo.models.reference import model_inputs
from autorlhf_nemo.models.response_logits import response_logits
from autorlhf_nemo.ops.vocab_parallel import token_log_probs
from autorlhf_nemo.training.batching import data_parallel_microbatches
from autorlhf_nemo.training.engine import forward_only


@dataclass
class Rollout:
    """One step's samples on this DP rank: ``samples_per_prompt`` consecutive rows per prompt."""

    generation: GenerationOutput
    scores: torch.Tensor        # [b] sequence scores, or [b, R] per-token ones, on the device
    samples_per_prompt: int

    @property
    def sequence_scores(self) -> torch.Tensor:
        """[b]: per-token scores summed over each response."""
        scores = self.scores.float()
        return scores if scores.dim() == 1 else (scores * self.generation.response_mask).sum(-1)


def penalize_missing_eos(scores: torch.Tensor, generation: GenerationOutput, penalty: float | None,
                         mode: str) -> torch.Tensor:
    """Scores of completions that did not end with EOS (stopped by length or a stop string):
    ``subtract``: score - penalty (TRL's missing_eos_penalty); ``replace``: -penalty (the
    asynchronous-RLHF paper's code, with 1.0). Per-token scores [b, R] take it on their last
    token (subtract) or become -penalty there and 0 elsewhere (replace)."""
    if penalty is None:
        return scores
    missing = torch.tensor([r != "eos" for r in generation.stop_reasons], device=scores.device)
    if scores.dim() == 1:
        penalised = scores - penalty if mode == "subtract" else torch.full_like(scores, -penalty)
        return torch.where(missing, penalised, scores)
    mask = generation.response_mask.float()
    last = torch.zeros_like(mask).scatter_(1, (mask.sum(-1, keepdim=True) - 1).clamp(min=0).long(), 1.0)
    penalised = scores - penalty * last if mode == "subtract" else -penalty * last
    return torch.where(missing[:, None], penalised, scores)


def response_forward(model, batch: dict, vocab_size: int, micro_batch_size: int, temperature: float = 1.0,
                     with_values: bool = False):
    """Log-probs [b, R] of the response tokens of ``batch`` (from make_sequence_batch) under
    softmax(logits / temperature), and values [b, R] from a PolicyModel with a value head
    (``with_values``), on the last stage (0 where masked); None elsewhere."""
    micro = data_parallel_microbatches(batch, 0, 1, micro_batch_size)
    seq = batch["tokens"].shape[1]

    def step(mb, model):
        with response_logits(model, mb["response_index"]):
            output = model(mb["tokens"], mb["position_ids"], mb["attention_mask"], **model_inputs(mb))

        def collect(out, non_loss_data=False):
            logits, values = out if with_values else (out, None)
            logprobs = token_log_probs(logits, mb["response_ids"], vocab_size, temperature) * mb["response_mask"]
            if values is not None:
                values = values.gather(1, mb["response_index"]) * mb["response_mask"]
            return logprobs, values

        return output, collect

    outputs = forward_only(model, micro, len(micro), step, seq, micro_batch_size)
    if not parallel_state.is_pipeline_last_stage():
        return None
    logprobs = torch.cat([o[0] for o in outputs])
    return logprobs, torch.cat([o[1] for o in outputs]) if with_values else None


def importance_weights(proximal: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor, clip: float,
                       per_sequence: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance weights of samples drawn by a stale policy (decoupled PPO):
    w = min(pi_proximal / pi_behaviour, clip), per token [b, R] (1 where masked) or per
    sequence [b] (``per_sequence``: of the summed log-probs). ``proximal``, ``behaviour``:
    [b, R] log-probs of the learner's current weights and of the generator's sampled
    distribution, 0 where masked. Returns (weights, clipped: 1 where the clip applied)."""
    log_ratio = (proximal - behaviour) * mask
    if per_sequence:
        log_ratio = log_ratio.sum(-1)
    ratio = torch.exp(log_ratio)
    return ratio.clamp(max=clip), (ratio > clip).float()
