"""Asynchronous RLHF on this machine: online DPO on the sentiment task (SmolLM2-135M-Instruct),
two processes of one thread each, three placements of the same run:

    (a) colocated   DP2: both ranks generate half the prompts, then both learn (today's loop)
    (b) split sync  rank 1 generates, rank 0 learns; max_staleness 0: the generator waits for
                    each update's weights, the learner for each batch
    (c) split async the same with max_staleness 1: the learner trains on step t's samples
                    while the generator draws step t + 1's (the paper's one-step overlap)

Same prompts, seeds and number of optimizer steps (8 prompts x 2 samples per step, 2
minibatches). Per configuration it prints the median wall time per step (evaluations and
checkpoints excluded), each rank's median seconds per step generating, learning (reward,
experience, update), syncing weights and waiting, and the held-out reward after the run
(greedy with its standard error over the prompts, and sampled at T 0.7) with the KL to the
initial policy; then the ratios (c)/(a) and (c)/(b) of the wall times. Each run is a torchrun
subprocess; the configurations run one after the other.

    .venv/bin/python bench/async.py [--quick] [--steps 20] [overrides ...]

``--quick``: 4 steps, 16 held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "a": ("colocated DP2", ["parallel=dp2"]),
    "b": ("split sync (1 gen + 1 learner, S=0)", ["rollout.placement=split", "rollout.generator_ranks=1",
                                                  "rollout.max_staleness=0"]),
    "c": ("split async (1 gen + 1 learner, S=1)", ["rollout.placement=split", "rollout.generator_ranks=1",
                                                   "rollout.max_staleness=1"]),
}
LEARN = ("time/score", "time/experience", "time/learn")


def run(name: str, overrides: list[str], args, root: Path) -> dict:
    run_dir = root / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "autorlhf_nemo",
           "algorithm=online_dpo", "task=sentiment", f"train.total_steps={args.steps}", f"run_dir={run_dir}",
           f"task.num_eval_prompts={args.eval_prompts}", f"logging.num_samples={args.eval_prompts}",
           "checkpoint.resume=false", "checkpoint.export_hf=false", "logging.progress_bar=false",
           "logging.tensorboard=false", "parallel.world_size=null", "train.micro_batch_size=4", *overrides, *args.overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/learn" in r]
    summary = json.loads((run_dir / "summary.json").read_text())

    def median(key):
        return statistics.median(r.get(key, 0.0) for r in steps)

    greedy = [reward for _, _, reward in summary["after"]["samples"]]
    out = {"wall": time.perf_counter() - start,
           "step": statistics.median(r["time/step"] - r.get("time/evaluate", 0.0) - r.get("time/save", 0.0)
                                     for r in steps),
           "learner": {"generate": median("time/generate"), "learn": sum(median(k) for k in LEARN),
                       "sync": median("time/sync"), "wait": median("time/wait")},
           "greedy": summary["after"]["rewards"]["greedy"],
           "greedy_se": statistics.stdev(greedy) / math.sqrt(len(greedy)),
           "sampled": statistics.mean(v for k, v in summary["after"]["rewards"].items() if k != "greedy"),
           "before": summary["before"]["rewards"]["greedy"], "kl": steps[-1].get("rollout/kl"),
           "staleness": [r.get("rollout/staleness", 0) for r in steps]}
    if "generator/time_generate" in steps[0]:
        out["generator"] = {"generate": median("generator/time_generate"), "learn": 0.0, "sync": 0.0,
                            "wait": median("generator/time_wait")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.quick:
        args.steps = 4
    args.eval_prompts = 16 if args.quick else 64
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.configs:
            label, overrides = CONFIGS[key]
            print(f"running ({key}) {label}, {args.steps} steps ...", flush=True)
            results[key] = run(key, overrides, args, Path(tmp))
    print(f"\nonline DPO, sentiment, SmolLM2-135M-Instruct, 2 processes x 1 thread, {args.steps} steps "
          f"(medians per step; ranks: learner / generator, or DP rank 0 when colocated)")
    print(f"{'config':38} {'s/step':>7} | {'rank':9} {'generate':>8} {'learn':>7} {'sync':>6} {'wait':>6} | "
          f"{'greedy (se)':>15} {'sampled':>8} {'KL':>6}")
    for key, r in results.items():
        label = CONFIGS[key][0]
        ranks = [("learner" if "generator" in r else "DP rank 0", r["learner"])]
        if "generator" in r:
            ranks.append(("generator", r["generator"]))
        for i, (rank, t) in enumerate(ranks):
            head = f"({key}) {label:34} {r['step']:7.2f}" if i == 0 else f"{'':38} {'':7}"
            tail = (f"{r['before']:.3f}->{r['greedy']:.3f} ({r['greedy_se']:.3f}) {r['sampled']:8.3f} "
                    f"{r['kl'] if r['kl'] is not None else float('nan'):6.2f}") if i == 0 else ""
            print(f"{head} | {rank:9} {t['generate']:8.2f} {t['learn']:7.2f} {t['sync']:6.2f} {t['wait']:6.2f} | {tail}")
    if "c" in results:
        for base in ("a", "b"):
            if base in results:
                ratio = results[base]["step"] / results["c"]["step"]
                gap = results["c"]["greedy"] - results[base]["greedy"]
                se = math.hypot(results["c"]["greedy_se"], results[base]["greedy_se"])
                print(f"(c)/({base}): (c) is {ratio:.2f}x as fast per step; held-out greedy reward (c) - ({base}) = "
                      f"{gap:+.3f} ({abs(gap) / se if se else float('inf'):.1f} standard errors)")
    c = results.get("c")
    if c and "generator" in c:
        g, l = c["generator"]["generate"], c["learner"]["learn"]
        print(f"one rank's generation G = {g:.2f} s and learning L = {l:.2f} s per step (c): perfect overlap "
              f"gives max(G, L) = {max(g, l):.2f} s per step for (c); (a) splits both over two ranks, about "
              f"(G + L) / 2 = {(g + l) / 2:.2f} s")


if __name__ == "__main__":
    main()
