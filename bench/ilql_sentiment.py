"""ILQL on sentiment, measured after the run: held-out VADER reward and KL to the base policy
at each decoding beta, from the run's export (policy + heads).

For each beta, the 64 held-out prompts are sampled at temperature T (Q-guided: softmax((log_softmax
(logits) + beta (min Qbar - V)) / T), the distribution the engine samples from) and scored by
VADER; the KL to the base policy is the sampled estimate sum_t log p_sampled(y_t) - log p_base,T(y_t)
per completion (the base SmolLM2-135M-Instruct at the same temperature, in transformers), averaged
over completions: what rollout/kl is for the online algorithms.

    .venv/bin/python bench/ilql_sentiment.py [--run-dir runs/sentiment_ilql] [--betas 0 1 4] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch


def base_logprobs(hf, generation, temperature: float) -> torch.Tensor:
    """[b, R] log-probs of the generated response tokens under the base model at ``temperature``."""
    ids = torch.cat([generation.prompt_ids, generation.response_ids], 1).cpu()
    mask = torch.cat([generation.prompt_mask, generation.response_mask], 1).cpu()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    p = generation.prompt_ids.shape[1]
    logp = torch.log_softmax(logits[:, p - 1:-1] / temperature, -1)
    return logp.gather(-1, generation.response_ids.cpu()[..., None])[..., 0] * generation.response_mask.cpu()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", default="runs/sentiment_ilql")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 1.0, 4.0])
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()

    from transformers import LlamaForCausalLM

    from autorlhf_nemo.algorithms import model_class
    from autorlhf_nemo.config.compose import compose_typed_config
    from autorlhf_nemo.convert import resolve_hf_checkpoint
    from autorlhf_nemo.convert.ilql_heads import HEADS_CONFIG, load_heads
    from autorlhf_nemo.generation import SamplingParams
    from autorlhf_nemo.parallel.runtime import initialize, native_torch, shutdown
    from autorlhf_nemo.tasks import _load_hf_weights, build_task

    export = Path(args.run_dir) / "hf_export"
    heads = json.loads((export / HEADS_CONFIG).read_text())
    cfg = compose_typed_config(["algorithm=ilql", "task=sentiment", f"model.hf_checkpoint={export}",
                                f"algorithm.two_qs={heads['two_qs']}", f"algorithm.head_width={heads['width']}"])
    task = build_task(cfg)
    runtime = initialize(cfg)
    model = model_class("ilql")(cfg, runtime, _load_hf_weights)
    load_heads(model, export)
    generator = model.generator(task.pad_token_id)
    base = LlamaForCausalLM.from_pretrained(resolve_hf_checkpoint("smollm2-135m-instruct"),
                                            dtype=torch.float32).eval()
    prompts = [task.encode(p) for p in task.eval_prompts]
    sampling = dataclasses.asdict(cfg.task.sampling)
    sampling["temperature"] = args.temperature
    print(f"held-out prompts: {len(prompts)}; sampled at T {args.temperature}, seeds {args.seeds}; "
          f"KL = mean over completions of sum_t log p_sampled - log p_base (nats)")
    print(f"{'beta':>6} | {'VADER reward':>12} | {'KL to base':>10} | {'length':>6}")
    for beta in args.betas:
        rewards, kls, lengths = [], [], []
        for seed in args.seeds:
            params = SamplingParams(**sampling, eos_token_ids=task.eos_token_ids, seed=10**6 + seed,
                                    row_seeds=list(range(len(prompts))), hidden_processors=model.guidance(beta))
            out = generator.generate(prompts, params)
            outputs = [task.decode(r) for r in out.responses()]
            rewards += task.reward_fn(outputs, task.eval_prompts, outputs)
            with native_torch():
                ref = base_logprobs(base, out, args.temperature)
            kls += ((out.processed_logprobs.cpu() - ref) * out.response_mask.cpu()).sum(-1).tolist()
            lengths += out.response_mask.sum(-1).tolist()
        mean = lambda xs: sum(xs) / len(xs)
        print(f"{beta:>6g} | {mean(rewards):>12.3f} | {mean(kls):>10.3f} | {mean(lengths):>6.1f}", flush=True)
    shutdown()


if __name__ == "__main__":
    main()
