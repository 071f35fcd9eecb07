"""Pretrain the randomwalks policy: next-token LM on the task's walks.

Each walk is encoded one token per node and ended with EOS, right-padded to
``max_length + 1`` tokens; the loss covers every real token including EOS
(but not the first, the prompt). Runs at any layout through the training
engine (Megatron schedules + optimizer); returns the model and its loss curve.
"""

from __future__ import annotations

import torch

from autorlhf_nemo.config.schema import RootConfig
from autorlhf_nemo.data.randomwalks import EOS, RandomWalks, encode
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.training.batching import data_parallel_microbatches
from autorlhf_nemo.training.engine import build_optimizer, train_step, wrap_for_training
from autorlhf_nemo.training.lm import lm_forward_step, make_lm_batch


def walk_tokens(task: RandomWalks) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [n, max_length + 1] (walk + EOS, EOS-padded), attention mask [n, max_length + 1]."""
    width = task.max_length + 1
    tokens = torch.full((len(task.walks), width), EOS, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for row, walk in enumerate(task.walks):
        ids = encode(walk) + [EOS]
        tokens[row, :len(ids)] = torch.tensor(ids)
        mask[row, :len(ids)] = 1
    return tokens, mask


def pretrain_micro_batch_size(batch_size: int, dp_size: int, micro_batch_size: int) -> int:
    """Each data-parallel rank's share of ``batch_size`` walks goes in micro-batches of
    ``micro_batch_size`` where that divides it, else in one micro-batch: the loss is
    per-token, so the split changes memory only, not the update."""
    if batch_size % dp_size:
        raise ValueError(f"task.pretrain_batch_size={batch_size} is not divisible by the data-parallel size "
                         f"{dp_size}: use a multiple of {dp_size}")
    share = batch_size // dp_size
    return micro_batch_size if share % micro_batch_size == 0 else share


def pretrain(cfg: RootConfig, runtime, task: RandomWalks, steps: int, batch_size: int, log_every: int = 0,
             lr: float | None = None):
    """Train a fresh ``cfg.model`` on ``task.walks``, ``batch_size`` walks per step over all
    data-parallel ranks (learning rate ``lr`` or ``cfg.train.lr``); returns (DDP model, [loss per step])."""
    vocab = cfg.model.vocab_size
    micro_size = pretrain_micro_batch_size(batch_size, runtime.dp_size, cfg.train.micro_batch_size)
    model = wrap_for_training(build_model(cfg), cfg)
    optimizer = build_optimizer(model, cfg, lr=lr)
    tokens, mask = walk_tokens(task)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    step_fn = lm_forward_step(vocab)
    losses = []
    for step in range(steps):
        rows = torch.randperm(len(tokens), generator=generator)[:batch_size]
        batch = make_lm_batch(tokens[rows], mask[rows])
        micro = data_parallel_microbatches(batch, runtime.dp_rank, runtime.dp_size, micro_size)
        result = train_step(model, optimizer, micro, len(micro), step_fn, tokens.shape[1] - 1, micro_size)
        losses.append(result.metrics["lm_loss"])
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"pretrain step {step}: loss {losses[-1]:.4f}", flush=True)
    return model, losses
