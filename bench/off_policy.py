"""Off-policy robustness (the asynchronous-RLHF paper's Fig. 4, small): how each online
algorithm degrades as its updates use older samples.

PPO, RLOO, GRPO and online DPO on trlX's randomwalks (graph seed 1000, the walker pretrained
once here and loaded by every run), with ``algorithm.minibatches`` N in {1, 2, 4, 8, 16}: each
step samples N x M prompts and makes N optimizer updates of M prompts, so update j of a step
trains on samples j updates stale (N = 1: on-policy). The minibatch size M and the number of
optimizer updates U are the same for every N (U / N steps), so every run sees as many samples
and makes as many updates. Each (algorithm, N) runs with >= 2 seeds; the bench prints per
algorithm and N the greedy optimality after the U updates (mean and spread over seeds) and the
KL to the initial policy of the policy after them (measured on the samples of one more step),
and saves a plot of both against N.

    .venv/bin/python bench/off_policy.py [--quick] [--seeds 0 1] [--out runs/off_policy.png]

``--quick``: N in {1, 4, 16}, one seed, fewer updates. Two runs go at a time (one thread each):
the figures are rewards and KLs, not times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALGORITHMS = ("ppo", "rloo", "grpo", "online_dpo")


def pretrain_walker(out: Path) -> None:
    """The randomwalks walker of the task's defaults, exported once for every run."""
    from autorlhf_nemo.config.compose import compose_typed_config
    from autorlhf_nemo.convert.hf_llama import export_hf_checkpoint
    from autorlhf_nemo.data.randomwalks import make_random_walks
    from autorlhf_nemo.data.randomwalks_pretrain import pretrain
    from autorlhf_nemo.parallel.runtime import initialize, shutdown

    cfg = compose_typed_config(["algorithm=ppo", "task=randomwalks"])
    runtime = initialize(cfg)
    walks = make_random_walks(seed=cfg.task.graph_seed)
    model, _ = pretrain(cfg, runtime, walks, steps=cfg.task.pretrain_steps, batch_size=cfg.task.pretrain_batch_size,
                        lr=cfg.task.pretrain_lr)
    export_hf_checkpoint(model.module, cfg.model, out)
    shutdown()


def run(algorithm: str, minibatches: int, seed: int, args, walker: Path, root: Path) -> dict:
    run_dir = root / f"{algorithm}_n{minibatches}_s{seed}"
    cmd = [sys.executable, "-m", "autorlhf_nemo", f"algorithm={algorithm}", "task=randomwalks",
           f"model.hf_checkpoint={walker}", f"algorithm.minibatches={minibatches}", "algorithm.epochs=1",
           f"algorithm.prompts_per_step={minibatches * args.minibatch_prompts}",
           # one step more than U / N: its samples come from the policy after U updates (their KL);
           # the greedy optimality is evaluated after step U / N
           f"train.total_steps={args.updates // minibatches + 1}", f"train.eval_every={args.updates // minibatches}",
           f"train.seed={seed}", f"train.micro_batch_size={args.minibatch_prompts // 2}", f"run_dir={run_dir}",
           "checkpoint.resume=false", "checkpoint.export_hf=false", "logging.progress_bar=false",
           "logging.tensorboard=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rows = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    steps = args.updates // minibatches
    return {"optimality": rows[steps]["eval/reward"], "before": rows[0]["eval/reward"],
            "kl": rows[steps + 1].get("rollout/kl", float("nan"))}


def plot(results: dict, sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for algorithm in ALGORITHMS:
        runs = [results[(algorithm, n)] for n in sizes]
        left.plot(sizes, [statistics.mean(r["optimality"] for r in rs) for rs in runs], marker="o", label=algorithm)
        right.plot(sizes, [statistics.mean(r["kl"] for r in rs) for rs in runs], marker="o", label=algorithm)
    for axis, label in ((left, "greedy optimality after U updates"), (right, "KL to the initial policy after them")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(sizes, [str(n) for n in sizes])
        axis.set_xlabel("minibatches N (updates per batch of samples)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    left.legend()
    fig.suptitle("randomwalks: off-policy robustness (more N = staler updates)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--updates", type=int, default=32, help="optimizer updates U of every run")
    parser.add_argument("--minibatch-prompts", type=int, default=32, help="prompts M per minibatch")
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "off_policy.png")
    args = parser.parse_args()
    sizes = [1, 4, 16] if args.quick else [1, 2, 4, 8, 16]
    if args.quick:
        args.seeds, args.updates = args.seeds[:1], 16
    jobs = [(a, n, s) for a in args.algorithms for n in sizes for s in args.seeds]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("pretraining the walker ...", flush=True)
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO / 'bench')!r}); "
                        f"import off_policy; off_policy.pretrain_walker(__import__('pathlib').Path({str(root / 'walker')!r}))"],
                       check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
        print(f"{len(jobs)} runs: {args.updates} updates of {args.minibatch_prompts} prompts each, two at a time ...",
              flush=True)
        with ThreadPoolExecutor(2) as pool:
            done = list(pool.map(lambda job: run(*job, args, root / "walker", root), jobs))
    results = {}
    for (a, n, _), r in zip(jobs, done):
        results.setdefault((a, n), []).append(r)
    args.algorithms = [a for a in ALGORITHMS if a in args.algorithms]
    print(f"\nrandomwalks (seed 1000), {args.updates} updates of {args.minibatch_prompts} prompts, seeds {args.seeds}: "
          f"greedy optimality after them (min-max over seeds) and the final policy's KL; the pretrained walker scores "
          f"{done[0]['before']:.3f}")
    print(f"{'algorithm':11}" + "".join(f"{'N=' + str(n):>28}" for n in sizes))
    for a in args.algorithms:
        cells = []
        for n in sizes:
            rs = results[(a, n)]
            opt = [r["optimality"] for r in rs]
            cells.append(f"{statistics.mean(opt):.3f} ({min(opt):.2f}-{max(opt):.2f}) "
                         f"KL {statistics.mean(r['kl'] for r in rs):.2f}")
        print(f"{a:11}" + "".join(f"{c:>28}" for c in cells))
    print("\ndrop in optimality from N=1 to N=16 (mean over seeds):")
    drops = {a: statistics.mean(r["optimality"] for r in results[(a, sizes[0])])
             - statistics.mean(r["optimality"] for r in results[(a, sizes[-1])]) for a in args.algorithms}
    for a, d in sorted(drops.items(), key=lambda item: item[1]):
        print(f"  {a:11} {d:+.3f}")
    if "online_dpo" in drops and len(drops) > 1:
        least = min(drops, key=drops.get)
        print(f"online DPO degrades least: {'yes' if least == 'online_dpo' else 'no (' + least + ' does)'}")
    if set(args.algorithms) == set(ALGORITHMS):
        plot(results, sizes, args.out)
        print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
