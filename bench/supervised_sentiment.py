"""SFT and offline DPO on the sentiment task: what each does to SmolLM2-135M-Instruct's held-out
VADER reward, its greedy win-rate over the initial policy, and its KL to it (issue 25's figures).

Arms (each run from the base SmolLM2-135M-Instruct, top 8 of 30 layers trained as in the RL demos):

    sft   best-of-4 demonstrations: for each of the 512 prompts of data/ilql_sentiment.jsonl (the base
          policy's own completions, 4 per prompt, VADER-scored) the highest-scored completion,
          conversational prompt-completion rows; 2 epochs, lr 2e-5 (TRL's SFT default)
    dpo   data/dpo_sentiment_pairs.jsonl (bench/dpo_sentiment_data.py: two base completions of each
          of 1100 training prompts, VADER picks, ties dropped); 1 epoch, beta 0.1, lr 5e-6,
          reference precomputed

Held out: the task's 64 held-out prompts and the 240 training prompts that neither dataset used
(train[1100:]), 304 in all. Per run: greedy VADER reward before (the initial policy) and after,
the win-rate of the after-greedy completion over the before-greedy one per prompt (VADER, ties
0.5), and KL(policy || initial) = mean over prompts of sum_t log pi(y_t) - log pi_0(y_t) for one
T 1 sample per prompt (bench/ilql_sentiment.py's estimate). Settings were fixed before any run.

Seeds (train.seed: data order, held-out split) per arm; a result file per arm and seed under --out
(with the run's metrics.jsonl; the run itself under runs/supervised_sentiment/), skipped on rerun; the summary prints mean and standard error per arm, and calls a difference
between arms only when it exceeds 2 combined standard errors.

    OMP_NUM_THREADS=2 .venv/bin/python bench/supervised_sentiment.py [--arms sft dpo] [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MINUTES = {"sft": 9.0, "dpo": 18.0}  # per run on the 2-core VM alone (measured: SFT 6-12, DPO 18.2)
QUICK_MINUTES = {"sft": 2.0, "dpo": 2.5}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def held_out_prompts(quick: bool) -> list[str]:
    from autorlhf_nemo.data.sentiment import review_prompts

    train, held_out = review_prompts(64)
    prompts = held_out + train[1100:]
    return prompts[:24] if quick else prompts


def sft_demos(path: Path) -> Path:
    """Best of each prompt's 4 completions in data/ilql_sentiment.jsonl, as conversational rows."""
    rows = [json.loads(line) for line in (REPO / "data" / "ilql_sentiment.jsonl").read_text().splitlines()]
    demos = []
    for first in range(0, len(rows), 4):
        group = rows[first:first + 4]
        best = max(group, key=lambda r: r["reward"])
        demos.append({"prompt": [{"role": "user", "content": best["prompt"]}],
                      "completion": [{"role": "assistant", "content": best["output"]}], "score": best["reward"]})
    path.write_text("".join(json.dumps(d) + "\n" for d in demos))
    return path


def run_overrides(arm: str, seed: int, run_dir: Path, data: Path, quick: bool) -> list[str]:
    common = [f"algorithm={arm}", f"data.path={data}", f"train.seed={seed}", f"run_dir={run_dir}",
              "algorithm.num_layers_unfrozen=8", "task.chat_template=true", "task.eval_greedy=true",
              "task.eval_seeds=[]", "task.sampling.max_new_tokens=32", "logging.num_samples=400",
              "logging.progress_bar=false", "logging.tensorboard=false", "checkpoint.save_every=0",
              "data.max_length=128", "train.seq_length=128"]
    if arm == "sft":
        extra = ["train.lr=2e-5", "train.global_batch_size=16", "train.micro_batch_size=8",
                 "algorithm.num_epochs=2"]
    else:
        extra = ["train.lr=5e-6", "train.global_batch_size=16", "train.micro_batch_size=8", "algorithm.beta=0.1",
                 "algorithm.num_epochs=1"]
    if quick:
        extra = [e for e in extra if not e.startswith("algorithm.num_epochs")] + ["train.total_steps=3",
                                                                                   "data.limit=96"]
    return common + extra


def run_one(arm: str, seed: int, run_dir: Path, data: Path, quick: bool) -> dict:
    """Train (autorlhf_nemo.train, VADER on the held-out prompts), then the KL from the export."""
    import torch

    import autorlhf_nemo
    from autorlhf_nemo.data.sentiment import VaderReward

    prompts = held_out_prompts(quick)
    start = time.perf_counter()
    summary = autorlhf_nemo.train(run_overrides(arm, seed, run_dir, data, quick), reward_fn=VaderReward(),
                                  eval_prompts=prompts)
    train_seconds = time.perf_counter() - start
    before = [r for _, _, r in summary["before"]["samples"]]
    after = [r for _, _, r in summary["after"]["samples"]]
    assert len(before) == len(after) == len(prompts)
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(after, before)) / len(prompts)
    kl, length = kl_to_initial(run_dir / "hf_export", prompts, seed)
    return {"arm": arm, "seed": seed, "prompts": len(prompts), "greedy_before": sum(before) / len(before),
            "greedy_after": sum(after) / len(after), "gain": (sum(after) - sum(before)) / len(before),
            "win_rate": wins, "kl": kl, "sample_length": length,
            "heldout_before": summary["before"].get("heldout"), "heldout_after": summary["after"].get("heldout"),
            "steps": len([h for h in summary["history"] if "time/step" in h]), "train_seconds": train_seconds,
            "dataset": summary["dataset"], "torch_threads": torch.get_num_threads()}


def kl_to_initial(export: Path, prompts: list[str], seed: int) -> tuple[float, float]:
    """Mean over prompts of sum_t log pi(y_t) - log pi_0(y_t), one T 1 sample of the exported policy
    per prompt (our engine), pi_0 = the base model in transformers; and the mean sample length."""
    import dataclasses

    import torch
    from transformers import LlamaForCausalLM

    from ilql_sentiment import base_logprobs

    from autorlhf_nemo.config.compose import compose_typed_config
    from autorlhf_nemo.convert import resolve_hf_checkpoint
    from autorlhf_nemo.convert.hf_llama import load_hf_checkpoint
    from autorlhf_nemo.generation import Generator, SamplingParams
    from autorlhf_nemo.models.gpt import build_model
    from autorlhf_nemo.parallel.runtime import initialize, native_torch, shutdown
    from autorlhf_nemo.tasks import build_task

    cfg = compose_typed_config(["algorithm=ppo", "task=sentiment", f"model.hf_checkpoint={export}"])
    task = build_task(cfg)
    runtime = initialize(cfg)
    gpt = build_model(cfg)
    load_hf_checkpoint(gpt, export, cfg.model)
    generator = Generator(gpt, cfg.model.vocab_size, task.pad_token_id)
    base = LlamaForCausalLM.from_pretrained(resolve_hf_checkpoint("smollm2-135m-instruct"), dtype=torch.float32).eval()
    sampling = dict(dataclasses.asdict(cfg.task.sampling), temperature=1.0)
    params = SamplingParams(**sampling, eos_token_ids=task.eos_token_ids, seed=2 * 10**6 + seed,
                            row_seeds=list(range(len(prompts))))
    out = generator.generate([task.encode(p) for p in prompts], params)
    with native_torch():
        ref = base_logprobs(base, out, 1.0)
    kls = ((out.processed_logprobs.cpu() - ref) * out.response_mask.cpu()).sum(-1)
    length = out.response_mask.sum(-1).float().mean().item()
    shutdown()
    return kls.mean().item(), length


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.mean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan"))


def summarize(results: dict[str, list[dict]]) -> None:
    print(f"\n{'arm':<5} {'runs':>4} | {'greedy before':>13} | {'greedy after':>16} | {'gain':>16} | "
          f"{'win-rate':>16} | {'KL (nats)':>14} | {'CPU min/run':>11}")
    stats = {}
    for arm, runs in results.items():
        if not runs:
            continue
        row = {key: mean_se([r[key] for r in runs]) for key in ("greedy_after", "gain", "win_rate", "kl")}
        stats[arm] = row
        minutes = statistics.mean(r["train_seconds"] for r in runs) / 60
        print(f"{arm:<5} {len(runs):>4} | {runs[0]['greedy_before']:>13.3f} | "
              + " | ".join(f"{m:>8.3f} +- {s:<5.3f}" for m, s in row.values()) + f" | {minutes:>11.1f}")
    if "sft" in stats and "dpo" in stats:
        for key in ("gain", "win_rate", "kl"):
            (a, sa), (b, sb) = stats["sft"][key], stats["dpo"][key]
            combined = math.sqrt(sa ** 2 + sb ** 2)
            verdict = (f"{'dpo' if b > a else 'sft'} higher by {abs(b - a):.3f} (> 2 combined SE {2 * combined:.3f})"
                       if abs(b - a) > 2 * combined else f"no difference detected (|{b - a:.3f}| <= 2 combined SE "
                                                         f"{2 * combined:.3f})")
            print(f"{key}: {verdict}")
    for arm, row in stats.items():
        m, s = row["gain"]
        print(f"{arm} greedy gain {m:+.3f} +- {s:.3f} (SE over seeds): goal +0.2 "
              + ("met" if m - 2 * s >= 0.2 else "not shown (mean - 2 SE below +0.2)" if m >= 0.2 else "not met"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=["sft", "dpo"], choices=["sft", "dpo"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="3 steps on 96 rows, 24 held-out prompts: a smoke run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "supervised_sentiment")
    parser.add_argument("--run-one", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    data = {"sft": sft_demos(out / "sft_demos.jsonl"), "dpo": REPO / "data" / "dpo_sentiment_pairs.jsonl"}

    if args.run_one:  # one run in its own process (Megatron's state is per process)
        arm, seed = args.run_one[0], int(args.run_one[1])
        run_dir = REPO / "runs" / "supervised_sentiment" / out.name / f"{arm}_seed{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run starts over
        result = run_one(arm, seed, run_dir, data[arm], args.quick)
        shutil.copy(run_dir / "metrics.jsonl", out / f"{arm}_seed{seed}.metrics.jsonl")
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # GiBs of optimizer state; the export stays
        partial = out / f"{arm}_seed{seed}.json.partial"
        partial.write_text(json.dumps(result, indent=1))
        partial.replace(out / f"{arm}_seed{seed}.json")
        return

    todo = [(arm, seed) for arm in args.arms for seed in args.seeds if not (out / f"{arm}_seed{seed}.json").exists()]
    per_run = QUICK_MINUTES if args.quick else MINUTES
    print(f"CPU: {cpu_model()}; results in {out}")
    print(f"{len(todo)} of {len(args.arms) * len(args.seeds)} runs to do (finished ones are skipped): projected "
          f"{sum(per_run[a] for a, _ in todo):.0f} min", flush=True)
    if not data["dpo"].exists() and "dpo" in args.arms:
        raise SystemExit(f"{data['dpo']} is missing: write it with bench/dpo_sentiment_data.py")
    for arm, seed in todo:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--run-one", arm, str(seed), "--out", str(args.out),
                               *(["--quick"] if args.quick else [])], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stdout[-3000:], proc.stderr[-5000:])
            raise SystemExit(f"{arm} seed {seed} failed")
        r = json.loads((out / f"{arm}_seed{seed}.json").read_text())
        print(f"{arm} seed {seed}: greedy {r['greedy_before']:.3f} -> {r['greedy_after']:.3f}, win-rate "
              f"{r['win_rate']:.3f}, KL {r['kl']:.3f}, {r['steps']} steps, {(time.perf_counter() - start) / 60:.1f} min",
              flush=True)
    results = {arm: [json.loads((out / f"{arm}_seed{s}.json").read_text()) for s in args.seeds
                     if (out / f"{arm}_seed{s}.json").exists()] for arm in args.arms}
    summarize(results)


if __name__ == "__main__":
    main()
