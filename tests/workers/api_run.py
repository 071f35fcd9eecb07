"""autorlhf_nemo.train(...) with a custom reward function and prompts, in one
process (launched by tests/test_api.py; with --split under torchrun by tests/test_async.py:
one learner and one generator rank). --mode picks the reward function."""

import argparse
import json

import autorlhf_nemo

PROMPTS = ["Name a fruit.", "Name a colour.", "Say hello.", "Name an animal."]


def length_reward(samples, prompts, outputs, **metadata):
    return [len(o) / 100 for o in outputs]


def broken_reward(samples, prompts, outputs, **metadata):
    for s in samples:
        if "colour" in s:
            raise KeyError("no score for colours")
    return [0.0] * len(samples)


def short_reward(samples, prompts, outputs, **metadata):
    return [0.0] * (len(samples) - 1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", required=True, choices=["ok", "raises", "wrong_count"])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--split", action="store_true", help="rollout.placement=split with one generator rank")
    args = parser.parse_args()
    split = ["rollout.placement=split", "rollout.generator_ranks=1", "rollout.max_staleness=1"] if args.split else []
    reward_fn = {"ok": length_reward, "raises": broken_reward, "wrong_count": short_reward}[args.mode]
    summary = autorlhf_nemo.train(
        ["model=smollm2_135m", f"run_dir={args.run_dir}", "train.total_steps=2", "train.micro_batch_size=4",
         "algorithm.prompts_per_step=4", "algorithm.epochs=1", "algorithm.num_layers_unfrozen=2",
         "task.sampling.max_new_tokens=6", "task.chat_template=true", "logging.progress_bar=false",
         "logging.tensorboard=false", "checkpoint.export_hf=false",
         "train.lr_warmup_steps=1", "train.lr_decay_style=cosine", *split],
        reward_fn=reward_fn, prompts=PROMPTS, eval_prompts=PROMPTS[:2])
    print("SUMMARY " + json.dumps({"before": summary["before"]["reward"], "after": summary["after"]["reward"],
                                   "steps": [h["step"] for h in summary["history"]]}))


if __name__ == "__main__":
    main()
