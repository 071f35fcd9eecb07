"""Generation at one layout (launched by tests/test_generation.py under torchrun).

Loads an HF checkpoint, generates for the prompts in --prompts with the
sampling parameters in --params (JSON), and records on rank 0 the outputs and
the log-probs a training forward pass assigns to the same sequences.
"""

import argparse
import json

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from autorlhf_nemo.config.compose import compose_config
from autorlhf_nemo.config.validate import to_container
from autorlhf_nemo.convert.hf_llama import load_hf_checkpoint
from autorlhf_nemo.generation import Generator, SamplingParams
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.ops.vocab_parallel import token_log_probs
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.training.engine import forward_only
from autorlhf_nemo.training.lm import make_lm_batch


def training_logprobs(model, out, vocab):
    """log p(response token) from an ordinary (no-cache) forward over prompt + response."""
    batch = make_lm_batch(out.sequences, out.attention_mask)

    def step(micro, m):
        output = m(micro["tokens"], micro["position_ids"], micro["attention_mask"])
        return output, lambda logits, non_loss_data=False: token_log_probs(logits, micro["labels"], vocab)

    seq = batch["tokens"].shape[1]
    outputs = forward_only(model, [batch], 1, step, seq, batch["tokens"].shape[0])
    if not parallel_state.is_pipeline_last_stage():
        return None
    prompt_len = out.prompt_ids.shape[1]
    return outputs[0][:, prompt_len - 1:] * out.response_mask


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", required=True)
    parser.add_argument("--prompts", required=True, help="JSON list of token-id lists")
    parser.add_argument("--params", default="{}", help="JSON SamplingParams fields")
    parser.add_argument("--out", required=True)
    parser.add_argument("--pad", type=int, default=0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = compose_config(args.overrides)
    runtime = initialize(cfg)
    m = to_container(cfg)["model"]
    model = build_model(cfg)
    load_hf_checkpoint(model, args.hf, m)
    prompts = json.loads(open(args.prompts).read())
    params = SamplingParams(**json.loads(args.params))
    out = Generator(model, m["vocab_size"], args.pad).generate(prompts, params)
    train_lp = training_logprobs(model, out, m["vocab_size"])
    holders = [None] * dist.get_world_size()
    dist.all_gather_object(holders, train_lp if runtime.tp_rank == 0 else None)
    sp_restored = all(getattr(mod, "sequence_parallel", False) == cfg.parallel.sequence_parallel
                      for mod in model.modules() if hasattr(mod, "sequence_parallel")
                      and isinstance(mod.sequence_parallel, bool))
    responses = [None] * dist.get_world_size()
    dist.all_gather_object(responses, out.response_ids)
    if dist.get_rank() == 0:
        torch.save({"output": out, "train_logprobs": next(h for h in holders if h is not None),
                    "sp_restored": sp_restored,
                    "all_ranks_agree": all(torch.equal(r, out.response_ids) for r in responses)}, args.out)
    shutdown()


if __name__ == "__main__":
    main()
