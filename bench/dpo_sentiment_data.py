"""Gold-labelled preference pairs for offline DPO (and reward models) on the sentiment task.

Two completions of each of the first ``--prompts`` training prompts (never the held-out ones) by
the task's base policy, SmolLM2-135M-Instruct, at the task's sampling settings (T 1.0, 32 new
tokens; bench/ilql_sentiment_data.py's sampler, one seeded noise stream per completion, so a rerun
writes the same file); VADER (the task's reward) picks the chosen one; pairs whose scores tie are
dropped and counted. Rows are conversational, as the completions were sampled in the chat template:

    {"prompt": [{"role": "user", "content": ...}], "chosen": [{"role": "assistant", "content": ...}],
     "rejected": [...], "score_chosen": float, "score_rejected": float}

    OMP_NUM_THREADS=2 .venv/bin/python bench/dpo_sentiment_data.py [--prompts 1100] [--out data/dpo_sentiment_pairs.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ilql_sentiment_data import sample_base_completions

REPO = Path(__file__).resolve().parent.parent


def pairs_of(rows: list[dict]) -> tuple[list[dict], int]:
    """(pairs, ties) of consecutive (prompt, output, reward) rows, two per prompt."""
    pairs, ties = [], 0
    for first, second in zip(rows[0::2], rows[1::2]):
        assert first["prompt"] == second["prompt"]
        if first["reward"] == second["reward"]:
            ties += 1
            continue
        chosen, rejected = (first, second) if first["reward"] > second["reward"] else (second, first)
        pairs.append({"prompt": [{"role": "user", "content": first["prompt"]}],
                      "chosen": [{"role": "assistant", "content": chosen["output"]}],
                      "rejected": [{"role": "assistant", "content": rejected["output"]}],
                      "score_chosen": chosen["reward"], "score_rejected": rejected["reward"]})
    return pairs, ties


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=1100, help="the first N training prompts")
    parser.add_argument("--batch-prompts", type=int, default=32, help="prompts per generate call")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "dpo_sentiment_pairs.jsonl")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()
    rows, generate_seconds, load_seconds = sample_base_completions(args.prompts, 2, args.batch_prompts, "ppo",
                                                                   args.overrides)
    pairs, ties = pairs_of(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in pairs)
    gaps = [p["score_chosen"] - p["score_rejected"] for p in pairs]
    print(f"wrote {len(pairs)} pairs of {args.prompts} prompts to {args.out} ({args.out.stat().st_size / 1e6:.2f} MB); "
          f"{ties} tied pairs dropped")
    print(f"generated {len(rows)} completions in {generate_seconds:.1f} s (model load {load_seconds:.1f} s); "
          f"score gap chosen - rejected: mean {statistics.mean(gaps):.3f}, median {statistics.median(gaps):.3f}")


if __name__ == "__main__":
    main()
