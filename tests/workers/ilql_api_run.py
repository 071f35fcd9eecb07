"""autorlhf_nemo.train(samples=..., rewards=...) in one process: offline ILQL through the Python
API on SmolLM2-135M (launched by tests/test_ilql.py); prints the summary's figures."""

import argparse
import json

import autorlhf_nemo

SAMPLES = [["Name a fruit.", " Apple, a sweet fruit."], ["Name a fruit.", " No."],
           ["Say hello.", " Hello there, friend!"], ["Say hello.", " Go away."]]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args()
    summary = autorlhf_nemo.train(
        ["model=smollm2_135m", f"run_dir={args.run_dir}", "train.total_steps=2", "train.global_batch_size=4",
         "train.micro_batch_size=4", "train.seq_length=48", "algorithm.num_layers_unfrozen=2", "algorithm.betas=[0,1]",
         "task.sampling.max_new_tokens=6", "task.chat_template=true", "logging.progress_bar=false",
         "logging.tensorboard=false", "checkpoint.export_hf=false"],
        samples=SAMPLES, rewards=[1.0, -1.0, 1.0, -1.0], eval_prompts=["Name a colour."],
        reward_fn=lambda samples, prompts, outputs, **_: [len(o) / 10 for o in outputs])
    print("SUMMARY " + json.dumps({"by_beta": summary["after"]["by_beta"], "beta": summary["after"]["beta"],
                                   "dataset": summary["dataset"], "steps": len(summary["history"])}))


if __name__ == "__main__":
    main()
