"""Generation throughput: this engine vs transformers' generate (KV cache on).

Same model (SmolLM2-135M-Instruct, in fp32 and in bf16 for both), same 8
chat prompts of different lengths, same thread count, greedy, EOS ignored so
every run produces exactly ``new_tokens`` per sequence. This engine runs as the
PPO trainer runs it: with oneDNN-packed weight copies where
``matmul.packing_available`` says so (made in the warm-up call; the cost of
remaking them, once per PPO step, is printed too). Prints tokens/s side
by side and the ratio. The two engines run in turns (theirs, ours, theirs,
...) and each figure is its fastest turn (noise on a shared machine only adds
time), so a machine whose speed drifts during the run treats both alike. transformers runs inside
``native_torch()``, without the CPU compatibility layer that Megatron needs.

Then, for our engine at the shortest length, where a call's time goes: per-call
set-up, the prefill pass, the decode steps' forward passes, and sampling and
bookkeeping between them (the decode loop around the model); and ILQL's Q-guided
decoding (beta 1, a V head and two target Q heads of width w = hidden on every
step's hidden state) against the plain engine: the heads' per-step cost.

    .venv/bin/python bench/generation.py [--threads 2] [--repeats 3] [--dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the ocean.",
    "List three prime numbers.",
    "Hi",
    "Explain in simple words why the sky looks blue during the day.",
    "Give me a short tip for learning to cook.",
    "What is 12 times 7?",
    "Describe a cat to someone who has never seen one, in two sentences.",
]


def interleaved(fns: dict, repeats: int) -> dict:
    """Fastest seconds of each callable, run in turns after one warm-up each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def cpu_model() -> str:
    """The CPU's model name and widest vector extension (from /proc/cpuinfo on Linux)."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    vector = next((v for v in ("avx512_bf16", "avx512f", "avx2") if v in flags), "no AVX2")
    return f"{name} ({vector}, {os.cpu_count()} cores)"


def time_breakdown(engine, prompts, params, repeats: int) -> dict:
    """Seconds of one generate call split into: the prefill forward pass, the decode steps'
    forward passes, and everything else (per-call set-up, sampling, bookkeeping); the
    fastest of ``repeats`` calls."""
    forward = engine._stage_forward
    calls: list[float] = []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        calls.append(time.perf_counter() - start)
        return out

    engine._stage_forward = timed
    best = None
    try:
        for _ in range(repeats):
            calls.clear()
            start = time.perf_counter()
            engine.generate(prompts, params)
            total = time.perf_counter() - start
            split = {"total": total, "prefill": calls[0], "decode forwards": sum(calls[1:]),
                     "decode steps": len(calls) - 1}
            split["set-up, sampling, bookkeeping"] = total - calls[0] - sum(calls[1:])
            if best is None or total < best["total"]:
                best = split
    finally:
        engine._stage_forward = forward
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer, LlamaForCausalLM

    from autorlhf_nemo.config.compose import compose_typed_config
    from autorlhf_nemo.convert import resolve_hf_checkpoint
    from autorlhf_nemo.convert.hf_llama import load_hf_checkpoint
    from autorlhf_nemo.generation import Generator, SamplingParams, matmul
    from autorlhf_nemo.generation.engine import left_pad
    from autorlhf_nemo.versions import chat_prompt_ids
    from autorlhf_nemo.models.gpt import build_model
    from autorlhf_nemo.parallel.runtime import initialize, native_torch, shutdown

    path = resolve_hf_checkpoint("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    tokens = {new: len(prompts) * new for new in args.new_tokens}

    print(f"CPU: {cpu_model()}; native bf16 GEMM: {matmul.native_bf16_gemm()}; torch {torch.__version__}")
    print(f"SmolLM2-135M-Instruct, batch {len(prompts)}, prompt lengths "
          f"{min(map(len, prompts))}-{max(map(len, prompts))}, greedy, {torch.get_num_threads()} threads, "
          f"best of {args.repeats} interleaved runs")
    print(f"{'dtype':>8} | {'new tokens':>10} | {'autorlhf_nemo tok/s':>19} | {'transformers tok/s':>18} | "
          f"{'ratio':>5}")
    initialize(compose_typed_config(["model=smollm2_135m"]))
    for dtype in args.dtypes:
        hf = LlamaForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
        cfg = compose_typed_config(["model=smollm2_135m", f"model.params_dtype={dtype}"])
        m = cfg.model
        model = build_model(cfg).eval()
        load_hf_checkpoint(model, path, m)
        engine = Generator(model, m.vocab_size, tokenizer.pad_token_id,
                           pack_weights=matmul.packing_available(torch.device("cpu"), getattr(torch, dtype)))
        one_token = SamplingParams(max_new_tokens=1, greedy=True)
        engine.generate(prompts[:1], one_token)   # warm-up (and the first packing)
        if engine.packed is not None:
            def call(repack):
                if repack:
                    engine.weights_changed()
                start = time.perf_counter()
                engine.generate(prompts[:1], one_token)
                return time.perf_counter() - start
            repack = min(call(True) - call(False) for _ in range(3))
            print(f"{dtype:>8} | repacking the weights after an update (PPO: once per step): {repack:.2f} s")
        for new in args.new_tokens:
            def theirs():
                with torch.no_grad(), native_torch():
                    out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                      do_sample=False, pad_token_id=tokenizer.pad_token_id)
                assert out.shape[1] == ids.shape[1] + new

            def ours():
                out = engine.generate(prompts, SamplingParams(max_new_tokens=new, greedy=True))
                assert out.response_ids.shape[1] == new

            seconds = interleaved({"theirs": theirs, "ours": ours}, args.repeats)
            ours_tps, theirs_tps = tokens[new] / seconds["ours"], tokens[new] / seconds["theirs"]
            print(f"{dtype:>8} | {new:>10} | {ours_tps:>19.1f} | {theirs_tps:>18.1f} | "
                  f"{ours_tps / theirs_tps:>5.2f}", flush=True)
        shortest = min(args.new_tokens)
        split = time_breakdown(engine, prompts, SamplingParams(max_new_tokens=shortest, greedy=True),
                               args.repeats)
        print(f"{dtype:>8} | where one {shortest}-token call's {split['total'] * 1000:.0f} ms go: prefill "
              f"{split['prefill'] * 1000:.0f} ms, {split['decode steps']} decode forwards "
              f"{split['decode forwards'] * 1000:.0f} ms "
              f"({split['decode forwards'] * 1000 / split['decode steps']:.1f} ms each), set-up + sampling "
              f"+ bookkeeping {split['set-up, sampling, bookkeeping'] * 1000:.0f} ms", flush=True)
        ilql_row(engine, model, m, prompts, shortest, args.repeats, dtype)
    shutdown()


def ilql_row(engine, model, m, prompts, new: int, repeats: int, dtype: str) -> None:
    """Q-guided decoding (algorithms/ilql) vs plain decoding, same engine and prompts."""
    from autorlhf_nemo.algorithms.ilql.model import QGuidance
    from autorlhf_nemo.generation import SamplingParams
    from autorlhf_nemo.models.ilql import ILQLHeads

    heads = ILQLHeads(model.config, model.vocab_size, m.vocab_size, width=m.hidden_size, two_qs=True, seed=1)
    guided = SamplingParams(max_new_tokens=new, greedy=True, hidden_processors=[QGuidance(heads, 1.0)])
    plain = SamplingParams(max_new_tokens=new, greedy=True)
    seconds = interleaved({"plain": lambda: engine.generate(prompts, plain),
                           "ilql": lambda: engine.generate(prompts, guided)}, repeats)
    tokens = len(prompts) * new
    extra = (seconds["ilql"] - seconds["plain"]) / new * 1000
    print(f"{dtype:>8} | ILQL Q-guided decoding (beta 1, V + 2 target Q heads, w = {m.hidden_size}, fp32 heads): "
          f"{tokens / seconds['ilql']:.1f} tok/s vs plain {tokens / seconds['plain']:.1f} tok/s "
          f"({seconds['plain'] / seconds['ilql']:.2f}x); the heads add {extra:.1f} ms per decode step", flush=True)


if __name__ == "__main__":
    main()
