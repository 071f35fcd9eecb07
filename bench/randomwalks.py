"""trlX's randomwalks benchmark for every algorithm: greedy optimality over the 20 start nodes,
every 5 steps, from the pretrained walker to the end of the run.

Each algorithm runs the command line with the task's defaults (`python -m autorlhf_nemo
algorithm=<name> task=randomwalks`: trlX's graph, seed 1000; the walker pretrained on its 1000
walks; 128 prompts per step, 30 steps), one process at a time, TP1.

    .venv/bin/python bench/randomwalks.py [--algorithms ppo online_dpo rloo grpo] [--quick] [overrides ...]

``--quick``: 10 steps. Extra arguments are passed on as overrides (e.g. task.graph_seed=1002).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(algorithm: str, steps: int, overrides: list[str], root: Path) -> dict:
    run_dir = root / algorithm
    cmd = [sys.executable, "-m", "autorlhf_nemo", f"algorithm={algorithm}", "task=randomwalks",
           f"train.total_steps={steps}", f"run_dir={run_dir}", "checkpoint.resume=false",
           "logging.progress_bar=false", "logging.tensorboard=false", "checkpoint.export_hf=false", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"curve": {r["step"]: r["eval/reward"] for r in rows if "eval/reward" in r},
            "score": {r["step"]: r["rollout/score"] for r in rows if "rollout/score" in r},
            "kl": rows[-1].get("rollout/kl"), "wall": time.perf_counter() - start,
            "note": next((line for line in proc.stdout.splitlines() if line.startswith("eval reward:")), "")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithms", nargs="+", default=["ppo", "online_dpo", "rloo", "grpo"])
    parser.add_argument("--quick", action="store_true", help="10 steps")
    args, overrides = parser.parse_known_args()
    steps = 10 if args.quick else 30
    marks = list(range(0, steps + 1, 5))
    with tempfile.TemporaryDirectory(prefix="randomwalks_") as tmp:
        results = {a: run(a, steps, overrides, Path(tmp)) for a in args.algorithms}
    print(next(r["note"] for r in results.values()))
    print(f"greedy optimality over the start nodes, every 5 steps (step 0: the pretrained walker); 128 prompts "
          f"per step; goal >= 0.9 after {steps} steps")
    print(f"{'algorithm':>10} | " + " | ".join(f"{'step ' + str(s):>7}" for s in marks)
          + f" | {'sampled score, last 5 steps':>27} | {'KL':>5} | {'wall':>6}")
    for algorithm, r in results.items():
        late = [r["score"][s] for s in range(steps - 4, steps + 1) if s in r["score"]]
        print(f"{algorithm:>10} | " + " | ".join(f"{r['curve'].get(s, float('nan')):>7.3f}" for s in marks)
              + f" | {sum(late) / len(late):>27.3f} | {r['kl']:>5.2f} | {r['wall'] / 60:>4.1f} m", flush=True)


if __name__ == "__main__":
    main()
