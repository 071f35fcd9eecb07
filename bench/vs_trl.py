"""GRPO, RLOO and online DPO in this project and in TRL 1.16, same settings, side by side.

SmolLM2-135M-Instruct, fp32, 2 threads, the sentiment task's prompts and VADER reward;
16 completions per optimizer step (GRPO and RLOO: 4 prompts x 4 samples, online DPO:
8 prompts x 2), at most 32 new tokens, temperature 0.7, top-k 0, top-p 1, AdamW lr 5e-6
constant, gradient clipping 1.0, every layer trained (a full frozen reference), beta 0.04
(GRPO) / 0.05 (RLOO) / 0.1 (DPO), one optimizer step per generation pass, 30 steps.
Each run is a subprocess of its own (TRL's in .venv-trl: `bash bench/trl_env.sh`), the two
frameworks in turns. Per algorithm it prints the median seconds per step (generation,
rewards, reference/old log-probs and the update; not the evaluations or checkpoints), their
ratio, each process's peak RSS, and the held-out reward before and after with the KL to the
initial policy, both measured by one evaluator (transformers, in this process) on the two
final policies: greedy VADER on the 64 held-out prompts, and KL(pi || pi_init) of the
temperature-0.7 distributions estimated from one sampled completion per held-out prompt.

    .venv/bin/python bench/vs_trl.py [--quick] [--algorithms grpo rloo online_dpo] [--steps 30]

``--quick``: 4 steps and 16 held-out prompts (a few minutes per algorithm).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRL_PYTHON = REPO / ".venv-trl" / "bin" / "python"
SHAPE = {"grpo": (4, 4), "rloo": (4, 4), "online_dpo": (8, 2)}        # prompts x samples per prompt
BETA = {"grpo": 0.04, "rloo": 0.05, "online_dpo": 0.1}
MAX_NEW, TEMPERATURE, LR, THREADS = 32, 0.7, 5e-6, 2
DIFFERENCES = {
    "grpo": "same objective (group-normalised advantages, token-level 'dapo' aggregation, k3 KL to the reference "
            "in the loss, log-probs of the tempered distribution); TRL's old log-probs are the detached current ones "
            "with one update per generation, as ours",
    "rloo": "same objective (k1 KL summed per sequence in the reward, leave-one-out baseline, clipped ratio of "
            "sequence probabilities, advantages not normalised)",
    "online_dpo": "TRL's log-probs are of the untempered distribution (logits not divided by the sampling "
                  "temperature; ours are of the distribution sampled), and TRL keeps tied pairs (the first completion "
                  "as chosen) where this project drops them",
}


# ---------------------------------------------------------------------------------------- workers
def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # ru_maxrss is KiB on Linux


def run_ours(spec: dict) -> dict:
    """One run of this project in this process (TP1, the CLI's own run_rl)."""
    from autorlhf_nemo.config.compose import compose_config
    from autorlhf_nemo.jobs import run_rl

    algorithm, (prompts, k) = spec["algorithm"], SHAPE[spec["algorithm"]]
    beta_key = "kl_coef" if algorithm == "rloo" else "beta"
    run_dir = Path(spec["out"]) / "ours"
    cfg = compose_config([
        f"algorithm={algorithm}", "task=sentiment", "model=smollm2_135m", f"run_dir={run_dir}",
        "algorithm.num_layers_unfrozen=-1", f"algorithm.prompts_per_step={prompts}",
        f"algorithm.samples_per_prompt={k}", "algorithm.epochs=1", "algorithm.minibatches=1",
        f"algorithm.{beta_key}={BETA[algorithm]}", f"train.micro_batch_size={prompts * k}", f"train.lr={LR}",
        "train.lr_decay_style=constant", "train.clip_grad=1.0", "train.adam_beta2=0.999", "train.weight_decay=0",
        f"train.total_steps={spec['steps']}", f"task.sampling.temperature={TEMPERATURE}",
        f"task.sampling.max_new_tokens={MAX_NEW}", "task.sampling.top_k=0", "task.sampling.top_p=1.0",
        f"task.num_eval_prompts={spec['eval_prompts']}", "task.eval_seeds=[]", "checkpoint.resume=false",
        "logging.progress_bar=false", "logging.tensorboard=false", f"train.seed={spec['seed']}"])
    run_rl(cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    phases = ("time/generate", "time/score", "time/experience", "time/learn")
    steps = [sum(r[p] for p in phases) for r in rows if "time/learn" in r]
    return {"step_seconds": steps, "peak_rss_gb": _peak_rss_gb(), "model_dir": str(run_dir / "hf_export"),
            "phases": {p: statistics.median(r[p] for r in rows if p in r) for p in phases}}


def run_trl(spec: dict) -> dict:
    """One TRL run in this process (the .venv-trl interpreter)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    torch.set_num_threads(THREADS)
    algorithm, (prompts, k) = spec["algorithm"], SHAPE[spec["algorithm"]]
    analyzer = SentimentIntensityAnalyzer()

    def vader(completions, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [analyzer.polarity_scores(t)["compound"] for t in texts]

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds, self.start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in spec["train_prompts"]]})
    common = dict(output_dir=str(Path(spec["out"]) / "trl"), learning_rate=LR, lr_scheduler_type="constant",
                  max_grad_norm=1.0, max_steps=spec["steps"], logging_steps=1, save_strategy="no", report_to=[],
                  use_cpu=True, seed=spec["seed"], weight_decay=0.0, adam_beta2=0.999, gradient_accumulation_steps=1,
                  disable_tqdm=True, temperature=TEMPERATURE, top_k=0, top_p=1.0,
                  # fp32 as ours (TRL turns bf16 autocast on by default: on a CPU without native bf16
                  # GEMM that is 10x slower), and no activation recomputation (ours keeps activations)
                  bf16=False, fp16=False, gradient_checkpointing=False)
    if algorithm == "online_dpo":
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

        args = OnlineDPOConfig(**common, per_device_train_batch_size=prompts, max_new_tokens=MAX_NEW,
                               beta=[BETA[algorithm]], loss_type="sigmoid")
        trainer_class = OnlineDPOTrainer
    else:
        config_class, trainer_class = {"grpo": (trl.GRPOConfig, trl.GRPOTrainer),
                                       "rloo": (trl.RLOOConfig, trl.RLOOTrainer)}[algorithm]
        args = config_class(**common, per_device_train_batch_size=prompts * k, num_generations=k,
                            max_completion_length=MAX_NEW, beta=BETA[algorithm], epsilon=0.2,
                            **({"loss_type": "dapo"} if algorithm == "grpo" else {}))
    times = StepTimes()
    trainer = trainer_class(model=model, reward_funcs=vader, args=args, train_dataset=dataset,
                            processing_class=tokenizer, callbacks=[times])
    trainer.train()
    out = Path(spec["out"]) / "trl_final"
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    return {"step_seconds": times.seconds, "peak_rss_gb": _peak_rss_gb(), "model_dir": str(out),
            "trl": trl.__version__}


# ---------------------------------------------------------------------------------------- evaluator
class Evaluator:
    """One measurement for both frameworks' final policies (transformers, this process): greedy
    VADER on the held-out prompts, and KL(pi || pi_init) of the tempered distributions from one
    sampled completion per prompt."""

    def __init__(self, initial_dir: str, prompts: list[str]):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from autorlhf_nemo.data.sentiment import VaderReward

        torch.set_num_threads(THREADS)
        self.torch, self.reward = torch, VaderReward()
        self.tokenizer = AutoTokenizer.from_pretrained(initial_dir)
        self.tokenizer.padding_side = "left"
        self.initial = AutoModelForCausalLM.from_pretrained(initial_dir, dtype=torch.float32).eval()
        self.prompts = prompts
        chats = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                    tokenize=False) for p in prompts]
        batch = self.tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
        self.batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def __call__(self, model_dir: str | None) -> dict:
        torch = self.torch
        model = self.initial if model_dir is None else self._load(model_dir)
        pad = self.tokenizer.pad_token_id
        with torch.no_grad():
            greedy = model.generate(**self.batch, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=pad)
            torch.manual_seed(0)
            sampled = model.generate(**self.batch, max_new_tokens=MAX_NEW, do_sample=True, temperature=TEMPERATURE,
                                     top_k=0, top_p=1.0, pad_token_id=pad)
            kl = self._kl(model, sampled) if model_dir is not None else 0.0
        width = self.batch["input_ids"].shape[1]
        texts = self.tokenizer.batch_decode(greedy[:, width:], skip_special_tokens=True)
        rewards = self.reward(samples=texts, prompts=self.prompts, outputs=texts)
        return {"reward": sum(rewards) / len(rewards), "kl": kl}

    def _load(self, model_dir: str):
        """The final weights in the initial model's architecture and config: each framework writes
        config.json its own way (transformers 5, which TRL runs on, keeps RoPE's base under
        rope_parameters, where the 4.x that reads it here would not look)."""
        import copy
        import glob

        from safetensors.torch import load_file

        weights = {}
        for path in glob.glob(f"{model_dir}/*.safetensors"):
            weights.update(load_file(path))
        model = copy.deepcopy(self.initial)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to the embedding
            raise RuntimeError(f"{model_dir}: missing {missing}, unexpected {unexpected}")
        return model.eval()

    def _kl(self, model, sequences) -> float:
        """Mean over prompts of sum_t log pi(y_t) - log pi_init(y_t), tempered, over each completion
        up to and including its first EOS."""
        torch = self.torch
        width = self.batch["input_ids"].shape[1]
        completion = sequences[:, width:]
        eos = completion == self.tokenizer.eos_token_id
        keep = (eos.long().cumsum(-1) - eos.long()) == 0                      # up to and including EOS
        attention = torch.cat([self.batch["attention_mask"], keep.long()], dim=1)

        def logps(m):
            logits = m(input_ids=sequences, attention_mask=attention).logits[:, width - 1:-1] / TEMPERATURE
            return torch.log_softmax(logits.float(), -1).gather(-1, completion[..., None])[..., 0]

        return float(((logps(model) - logps(self.initial)) * keep).sum(-1).mean())


# ---------------------------------------------------------------------------------------- driver
def _worker(kind: str, spec: dict, workdir: Path) -> dict:
    spec_file, result_file = workdir / f"{kind}_spec.json", workdir / f"{kind}_result.json"
    spec_file.write_text(json.dumps(spec))
    python = str(TRL_PYTHON) if kind == "trl" else sys.executable
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([python, __file__, "--worker", kind, "--spec", str(spec_file), "--result", str(result_file)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(result_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithms", nargs="+", default=["grpo", "rloo", "online_dpo"], choices=sorted(SHAPE))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="4 steps, 16 held-out prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.spec.read_text())
        args.result.write_text(json.dumps((run_ours if args.worker == "ours" else run_trl)(spec)))
        return
    if not TRL_PYTHON.exists():
        sys.exit(f"{TRL_PYTHON} not found: run `bash bench/trl_env.sh` first (TRL is a bench-only dependency)")

    from autorlhf_nemo.convert import resolve_hf_checkpoint
    from autorlhf_nemo.data.sentiment import review_prompts

    steps = 4 if args.quick else args.steps
    eval_prompts = 16 if args.quick else 64
    model = str(resolve_hf_checkpoint("smollm2-135m-instruct"))
    train_prompts, held_out = review_prompts(64)
    held_out = held_out[:eval_prompts]
    evaluator = Evaluator(model, held_out)
    before = evaluator(None)
    print(f"SmolLM2-135M-Instruct fp32, {THREADS} threads, {steps} steps, 16 completions per step, T {TEMPERATURE}, "
          f"<= {MAX_NEW} new tokens, lr {LR} constant, all layers trained; held-out greedy VADER on "
          f"{len(held_out)} prompts before training: {before['reward']:.3f}", flush=True)
    print(f"{'algorithm':>10} | {'framework':>13} | {'s/step':>6} | {'peak RSS':>8} | {'held-out reward':>21} | "
          f"{'KL to initial':>13}")
    for algorithm in args.algorithms:
        results = {}
        with tempfile.TemporaryDirectory(prefix=f"vs_trl_{algorithm}_") as tmp:
            for kind in ("trl", "ours"):  # in turns
                spec = {"algorithm": algorithm, "steps": steps, "seed": args.seed, "out": str(Path(tmp) / kind),
                        "model": model, "train_prompts": train_prompts, "eval_prompts": eval_prompts}
                result = _worker(kind, spec, Path(tmp))
                result.update(evaluator(result["model_dir"]))
                results[kind] = result
        for kind, label in (("ours", "autorlhf_nemo"), ("trl", f"TRL {results['trl']['trl']}")):
            r = results[kind]
            gain = r["reward"] - before["reward"]
            print(f"{algorithm:>10} | {label:>13} | {statistics.median(r['step_seconds']):>6.2f} | "
                  f"{r['peak_rss_gb']:>6.2f} GB | {before['reward']:.3f} -> {r['reward']:.3f} ({gain:+.3f}) | "
                  f"{r['kl']:>13.3f}")
        speedup = statistics.median(results["trl"]["step_seconds"]) / statistics.median(results["ours"]["step_seconds"])
        phases = ", ".join(f"{k.split('/')[1]} {v:.2f} s" for k, v in results["ours"]["phases"].items())
        print(f"{algorithm:>10} | per step: ours {speedup:.2f}x faster than TRL (goal 1.5x); our phases: {phases}")
        print(f"{algorithm:>10} | semantics: {DIFFERENCES[algorithm]}", flush=True)


if __name__ == "__main__":
    main()
