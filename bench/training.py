"""Learner throughput: a training step of this project (Megatron GPTModel, DDP, Megatron's
optimizer, one micro-batch through ``forward_backward_func``) vs plain transformers + torch
AdamW on the same model in the same process.

SmolLM2-135M-Instruct, fp32, a batch of 8 sequences of 96 tokens (next-token loss over all
of them), every layer trained, gradient clipping 1.0, Adam(W) at lr 5e-6 for both. Each
figure is the fastest of the turns (the two run in turns, theirs, ours, theirs, ...), in
tokens per second (8 x 96 / step seconds), with the ratio. Then where our step's time goes:
forward, backward (Megatron's schedule), optimizer step. transformers runs inside
``native_torch()``, without the CPU compatibility layer that Megatron needs.

    .venv/bin/python bench/training.py [--threads 2] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

BATCH, SEQ = 8, 96


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 turns each (about a minute)")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    torch.set_num_threads(args.threads)

    from generation import cpu_model, interleaved  # bench/generation.py
    from transformers import LlamaForCausalLM

    from autorlhf_nemo.config.compose import compose_typed_config
    from autorlhf_nemo.convert import resolve_hf_checkpoint
    from autorlhf_nemo.convert.hf_llama import load_hf_checkpoint
    from autorlhf_nemo.models.gpt import build_model
    from autorlhf_nemo.parallel.runtime import initialize, native_torch, shutdown
    from autorlhf_nemo.training.engine import build_optimizer, train_step, wrap_for_training
    from autorlhf_nemo.training.lm import lm_forward_step, make_lm_batch

    path = resolve_hf_checkpoint("smollm2-135m-instruct")
    cfg = compose_typed_config(["model=smollm2_135m", "train.lr=5e-6", "train.clip_grad=1.0",
                                "train.adam_beta2=0.999", f"train.micro_batch_size={BATCH}"])
    initialize(cfg)
    tokens = torch.randint(0, cfg.model.vocab_size, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(0))

    gpt = build_model(cfg)
    load_hf_checkpoint(gpt, path, cfg.model)
    ours_model = wrap_for_training(gpt, cfg)
    optimizer = build_optimizer(ours_model, cfg)
    batch = make_lm_batch(tokens)
    step_fn = lm_forward_step(cfg.model.vocab_size)

    hf = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    hf_optimizer = torch.optim.AdamW(hf.parameters(), lr=5e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def theirs():
        with native_torch():
            loss = hf(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss  # shifts labels itself
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            hf_optimizer.step()
            hf_optimizer.zero_grad(set_to_none=True)

    def ours():
        train_step(ours_model, optimizer, [batch], 1, step_fn, SEQ, BATCH)

    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    print(f"SmolLM2-135M-Instruct fp32, all layers trained, {BATCH} x {SEQ} tokens per step, best of {repeats} "
          f"interleaved steps")
    seconds = interleaved({"theirs": theirs, "ours": ours}, repeats)
    ours_tps, theirs_tps = BATCH * SEQ / seconds["ours"], BATCH * SEQ / seconds["theirs"]
    print(f"{'':>22} | {'tokens/s':>9} | {'s/step':>7}")
    print(f"{'autorlhf_nemo':>22} | {ours_tps:>9.0f} | {seconds['ours']:>7.3f}")
    print(f"{'transformers + AdamW':>22} | {theirs_tps:>9.0f} | {seconds['theirs']:>7.3f}")
    print(f"ratio (ours / theirs): {ours_tps / theirs_tps:.2f}x", flush=True)
    print(where_our_time_goes(ours_model, optimizer, batch, step_fn, repeats))
    shutdown()


def where_our_time_goes(model, optimizer, batch, step_fn, repeats: int) -> str:
    """Forward, backward and optimizer seconds of our step (fastest of ``repeats``)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def timed_forward_step(data_iter, m):
        start = time.perf_counter()
        output, loss_func = step_fn(next(data_iter), m)
        marks["forward"] = time.perf_counter() - start
        return output, loss_func

    best = None
    for _ in range(repeats):
        marks = {}
        model.zero_grad_buffer()
        optimizer.zero_grad()
        start = time.perf_counter()
        get_forward_backward_func()(forward_step_func=timed_forward_step, data_iterator=iter([batch]),
                                    model=[model], num_microbatches=1, seq_length=SEQ, micro_batch_size=BATCH,
                                    forward_only=False)
        schedule = time.perf_counter() - start
        start = time.perf_counter()
        optimizer.step()
        marks["optimizer"] = time.perf_counter() - start
        marks["backward"] = schedule - marks["forward"]
        if best is None or sum(marks.values()) < sum(best.values()):
            best = marks
    total = sum(best.values())
    return (f"where our {total:.2f} s step goes: forward {best['forward']:.2f} s, backward + grad reduce "
            f"{best['backward']:.2f} s, optimizer (clip + Adam) {best['optimizer']:.2f} s")


if __name__ == "__main__":
    main()
