"""Offline dataset for ILQL on the sentiment task: the base policy's own completions, VADER-scored.

The task's base policy (SmolLM2-135M-Instruct, built and loaded as a run builds it)
samples ``--samples-per-prompt`` completions of each of the first ``--prompts``
training prompts (chat-templated, never the held-out eval prompts) at the task's
sampling settings (conf/task/sentiment.yaml: temperature 1.0, 32 new tokens). Each
completion draws its own seeded noise stream (row seed = its index in the file), so a
rerun writes the same file. Rows are JSONL ``{"prompt", "output", "reward"}``: the
prompt as written (the consumer applies the chat template), the decoded completion
without special tokens, and the task's reward (VADER compound score, in [-1, 1]).
Generation time is reported apart from model load time.

    OMP_NUM_THREADS=2 .venv/bin/python bench/ilql_sentiment_data.py [--prompts 512] \
        [--samples-per-prompt 4] [--batch-prompts 32] [--out data/ilql_sentiment.jsonl] [hydra overrides ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sample_base_completions(num_prompts: int, samples_per_prompt: int, batch_prompts: int, algorithm: str,
                            overrides: list[str], first_prompt: int = 0) -> tuple[list[dict], float, float]:
    """The sentiment task's base policy's completions of training prompts first_prompt ..
    first_prompt + num_prompts - 1, samples_per_prompt each, VADER-scored: ({"prompt", "output",
    "reward"} rows, generation seconds, model load seconds). Row seed = the row's index counted from
    prompt 0, so a rerun (or a longer run) draws the same completions."""
    from autorlhf_nemo.config.compose import compose_typed_config
    from autorlhf_nemo.generation import Generator, SamplingParams, matmul
    from autorlhf_nemo.models.gpt import build_model
    from autorlhf_nemo.parallel.runtime import initialize, shutdown
    from autorlhf_nemo.tasks import build_task

    # The policy, as a run builds it (jobs.py, algorithms/base.py): task, runtime, trunk, weights.
    start = time.perf_counter()
    cfg = compose_typed_config([f"algorithm={algorithm}", "task=sentiment", *overrides])
    task = build_task(cfg)
    runtime = initialize(cfg)
    gpt = build_model(cfg)
    task.init_weights(gpt, cfg, runtime)
    generator = Generator(gpt, cfg.model.vocab_size, task.pad_token_id,
                          pack_weights=matmul.packing_available(runtime.device, gpt.config.params_dtype))
    load_seconds = time.perf_counter() - start

    if not 0 < first_prompt + num_prompts <= len(task.prompts):
        raise SystemExit(f"prompts {first_prompt}..{first_prompt + num_prompts - 1}: the task has {len(task.prompts)} training prompts")
    prompts = task.prompts[first_prompt:first_prompt + num_prompts]
    k = samples_per_prompt
    sampling = dataclasses.asdict(cfg.task.sampling)
    rows = []
    start = time.perf_counter()
    for first in range(0, len(prompts), batch_prompts):
        batch = prompts[first:first + batch_prompts]
        params = SamplingParams(**sampling, eos_token_ids=task.eos_token_ids, seed=cfg.train.seed,
                                row_seeds=[(first_prompt + first) * k + r for r in range(len(batch) * k)])
        generation = generator.generate([task.encode(p) for p in batch], params, samples_per_prompt=k)
        outputs = [task.decode(r) for r in generation.responses()]
        texts = [p for p in batch for _ in range(k)]
        rewards = task.reward_fn([p + o for p, o in zip(texts, outputs)], texts, outputs)
        rows += [{"prompt": p, "output": o, "reward": float(r)} for p, o, r in zip(texts, outputs, rewards)]
        print(f"  {first + len(batch)}/{len(prompts)} prompts, {time.perf_counter() - start:.1f} s", flush=True)
    generate_seconds = time.perf_counter() - start
    shutdown()
    return rows, generate_seconds, load_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=512, help="the first N training prompts")
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--batch-prompts", type=int, default=32, help="prompts per generate call")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "ilql_sentiment.jsonl")
    parser.add_argument("--algorithm", default="ppo",
                        help="any: the config needs one; none of them changes sampling for this task")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (e.g. model.params_dtype=bfloat16)")
    args = parser.parse_args()

    rows, generate_seconds, load_seconds = sample_base_completions(args.prompts, args.samples_per_prompt,
                                                                   args.batch_prompts, args.algorithm, args.overrides)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    rewards = [row["reward"] for row in rows]
    print(f"wrote {len(rows)} rows to {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    print(f"generated {len(rows)} completions in {generate_seconds:.1f} s (model load {load_seconds:.1f} s); "
          f"reward mean {statistics.mean(rewards):.3f} std {statistics.pstdev(rewards):.3f} "
          f"min {min(rewards):.3f} max {max(rewards):.3f}")


if __name__ == "__main__":
    main()
