"""A Qwen2 checkpoint at one layout (launched by tests/test_qwen2.py under torchrun).

Loads the HF checkpoint (q/k/v biases included) and records on rank 0:
  logits      full-vocabulary logits of a fixed batch (forward_only, gathered over TP)
  weights     the loaded weights gathered back as an HF state dict
  greedy      greedy continuations of the prompts from autorlhf_nemo.generation.Generator
and exports the loaded weights as an HF checkpoint to --export.
"""

import argparse
import json

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.convert.hf_llama import export_hf_checkpoint, gather_hf_state_dict, load_hf_checkpoint
from autorlhf_nemo.generation import Generator, SamplingParams
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.training.engine import forward_only
from autorlhf_nemo.training.lm import lm_forward_step, make_lm_batch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", required=True)
    parser.add_argument("--batch", required=True, help="torch file with tokens [n, s+1]")
    parser.add_argument("--prompts", required=True, help="JSON list of token-id lists")
    parser.add_argument("--new-tokens", type=int, required=True)
    parser.add_argument("--export", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = compose_typed_config(args.overrides)
    initialize(cfg)
    m = cfg.model
    model = build_model(cfg)
    load_hf_checkpoint(model, args.hf, m)

    tokens = torch.load(args.batch)
    outputs = forward_only(model, [make_lm_batch(tokens)], 1, lm_forward_step(m.vocab_size),
                           tokens.shape[1] - 1, tokens.shape[0])
    logits = None
    if parallel_state.is_pipeline_last_stage():
        logits = gather_from_tensor_model_parallel_region(outputs[0])[..., :m.vocab_size].float()

    prompts = json.loads(open(args.prompts).read())
    greedy = Generator(model, m.vocab_size, pad_token_id=0).generate(
        prompts, SamplingParams(max_new_tokens=args.new_tokens, greedy=True))
    weights = gather_hf_state_dict(model, m)
    export_hf_checkpoint(model, m, args.export)
    if dist.get_rank() == 0:
        torch.save({"logits": logits, "weights": weights, "greedy": greedy.response_ids,
                    "bias_params": sorted(n for n, _ in model.named_parameters() if n.endswith(".bias"))},
                   args.out)
    shutdown()


if __name__ == "__main__":
    main()
