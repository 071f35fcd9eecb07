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

from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.convert.hf_llama import load_hf_checkpoint
from autorlhf_nemo.generation import Generator, SamplingParams
from autorlhf_nemo.generation.engine import left_pad
from autorlhf_nemo.generation.sampling import VocabParallel
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.ops.vocab_parallel import token_log_probs
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.training.engine import broadcast_from_last_stage, forward_only
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


def shared_prefill_checks(generator, prompts, fields: dict, k: int = 3) -> dict:
    """k samples per prompt that share one prefill against the prompts repeated k times with the
    same per-row seeds: tokens and log-probs, and the rows each prefill (first forward) ran on."""
    prefill_rows = []
    forward = generator._stage_forward

    def recording(input_ids, *args):
        prefill_rows.append(input_ids.shape[0])
        return forward(input_ids, *args)

    params = SamplingParams(**dict(fields, row_seeds=list(range(len(prompts) * k))))
    generator._stage_forward = recording
    try:
        shared = generator.generate(prompts, params, samples_per_prompt=k)
        first_shared = prefill_rows[0]
        prefill_rows.clear()
        repeated = generator.generate([p for p in prompts for _ in range(k)], params)
    finally:
        del generator._stage_forward
    mask = shared.response_mask.bool()
    return {"tokens_equal": torch.equal(shared.response_ids, repeated.response_ids)
            and torch.equal(shared.response_mask, repeated.response_mask),
            "logprob_diff": (shared.processed_logprobs - repeated.processed_logprobs)[mask].abs().max().item(),
            "samples_differ": not torch.equal(shared.response_ids[0], shared.response_ids[1]),
            "prefill_rows": (first_shared, prefill_rows[0])}


def padding_checks(model, prompts, vocab, pad):
    """Each prompt alone (no padding) against the same prompt in a left-padded and in a
    right-padded batch: max abs differences of the logits (this rank's vocab shard) and of
    the token log-probs over the real positions. On every rank (from the last stage)."""

    def forward(tokens, mask):
        batch = make_lm_batch(tokens, mask)

        def step(micro, m):
            output = m(micro["tokens"], micro["position_ids"], micro["attention_mask"])
            return output, lambda logits, non_loss_data=False: (
                logits.float(), token_log_probs(logits, micro["labels"], vocab))

        outputs = forward_only(model, [batch], 1, step, batch["tokens"].shape[1], tokens.shape[0])
        return outputs[0] if outputs else None

    rows = [p for p in prompts if len(p) >= 2]
    left_ids, left_mask = left_pad(rows, pad)
    right_ids, right_mask = torch.full_like(left_ids, pad), torch.zeros_like(left_mask)
    for row, prompt in enumerate(rows):
        right_ids[row, :len(prompt)], right_mask[row, :len(prompt)] = torch.tensor(prompt), 1
    left, right = forward(left_ids, left_mask), forward(right_ids, right_mask)
    diffs = {"left_logits": 0.0, "left_logprobs": 0.0, "right_logits": 0.0, "right_logprobs": 0.0}
    for row, prompt in enumerate(rows):
        alone = forward(torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long))
        if alone is None:  # not the last pipeline stage
            continue
        n, width = len(prompt) - 1, left_ids.shape[1] - 1
        for name, batch, real in (("left", left, slice(width - n, width)), ("right", right, slice(0, n))):
            diffs[f"{name}_logits"] = max(diffs[f"{name}_logits"],
                                          (batch[0][row, real] - alone[0][0]).abs().max().item())
            diffs[f"{name}_logprobs"] = max(diffs[f"{name}_logprobs"],
                                            (batch[1][row, real] - alone[1][0]).abs().max().item())
    return broadcast_from_last_stage(diffs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", required=True)
    parser.add_argument("--prompts", required=True, help="JSON list of token-id lists")
    parser.add_argument("--params", default="[{}]", help="JSON list of SamplingParams fields; one run each")
    parser.add_argument("--out", required=True)
    parser.add_argument("--pad", type=int, default=0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = compose_typed_config(args.overrides)
    runtime = initialize(cfg)
    m = cfg.model
    model = build_model(cfg)
    load_hf_checkpoint(model, args.hf, m)
    prompts = json.loads(open(args.prompts).read())
    generator = Generator(model, m.vocab_size, args.pad)
    runs = []
    for fields in json.loads(args.params):
        banned = fields.pop("ban_tokens", [])
        if banned:
            fields["logits_processors"] = [ban_tokens(banned)]
        out = generator.generate(prompts, SamplingParams(**fields))
        train_lp = training_logprobs(model, out, m.vocab_size)
        holders = [None] * dist.get_world_size()
        dist.all_gather_object(holders, (runtime.dp_rank, train_lp) if runtime.tp_rank == 0 else None)
        outputs = [None] * dist.get_world_size()
        dist.all_gather_object(outputs, (runtime.dp_rank, out))
        mine = [o for dp, o in outputs if dp == runtime.dp_rank]
        runs.append({
            "output": out,  # DP rank 0's (this is rank 0)
            "train_logprobs": next(lp for dp, lp in (h for h in holders if h) if dp == 0 and lp is not None),
            "model_parallel_peers_agree": all(torch.equal(o.response_ids, mine[0].response_ids)
                                              for o in mine),
            "dp_responses": [o.response_ids for dp, o in sorted(outputs, key=lambda x: x[0])],
        })
    # The other matmul form (F.linear, what GPUs use) on the greedy and first sampled runs.
    linear_form = Generator(model, m.vocab_size, args.pad, weight_first=False)
    other_form = [linear_form.generate(prompts, SamplingParams(**fields))
                  for fields in json.loads(args.params)[:2]]
    # oneDNN-packed weight copies (what PPO decodes with on fp32 CPUs), then the copies'
    # contract: after a weight update they are stale until weights_changed() is called.
    packed_gen = Generator(model, m.vocab_size, args.pad, pack_weights=True)
    greedy = SamplingParams(**json.loads(args.params)[0])
    packed_form = [packed_gen.generate(prompts, SamplingParams(**fields))
                   for fields in json.loads(args.params)[:2]]
    copies_made = len(packed_gen.packed)
    layer_weight = model.decoder.layers[-1].mlp.linear_fc2.weight
    with torch.no_grad():
        layer_weight.data.mul_(1.5)  # as Megatron's optimizers write: through .data
    stale = packed_gen.generate(prompts, greedy)
    packed_gen.weights_changed([layer_weight])
    refreshed = packed_gen.generate(prompts, greedy)
    unpacked = Generator(model, m.vocab_size, args.pad).generate(prompts, greedy)
    packing = {"packed_form": packed_form, "copies_made": copies_made, "stale": stale,
               "refreshed": refreshed, "unpacked_after_update": unpacked}
    sp_flags = [getattr(mod, f) for mod in model.modules()
                for f in ("sequence_parallel", "reduce_scatter_embeddings")
                if isinstance(getattr(mod, f, None), bool)]
    result = {"runs": runs, "sp_flags_true": any(sp_flags), "other_form": other_form, "packing": packing,
              "default_weight_first": generator.weight_first,
              "inference_tensors": any(t.is_inference() for t in vars(runs[0]["output"]).values()
                                       if isinstance(t, torch.Tensor)),
              "sp_flags": sp_flags, "sampling": sampling_checks(m.vocab_size, model.vocab_size),
              "shared_prefill": shared_prefill_checks(generator, prompts, json.loads(args.params)[1])}
    if not cfg.parallel.sequence_parallel:  # single prompts have lengths SP cannot split
        result["padding"] = padding_checks(model, prompts, m.vocab_size, args.pad)
    if dist.get_rank() == 0:
        torch.save(result, args.out)
    shutdown()


def ban_tokens(token_ids):
    """A user logits processor on vocab-parallel logits: -inf for ``token_ids``
    on whichever TP rank owns them."""

    def processor(logits, vocab_start, tokens_so_far):
        local = [t - vocab_start for t in token_ids if 0 <= t - vocab_start < logits.shape[-1]]
        logits = logits.clone()
        logits[:, local] = float("-inf")
        return logits

    return processor


def nucleus(logits, top_p):
    """[b, v] bool: the tokens whose preceding probability mass (in descending order) is < top_p."""
    sorted_p, order = logits.softmax(-1).sort(-1, descending=True)
    return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, (sorted_p.cumsum(-1) - sorted_p) < top_p)


def sampling_checks(vocab, padded_vocab):
    """Vocab-parallel top-k / top-p / argmax / log-softmax against the full-vocabulary
    computation on the same random logits (identical on every rank)."""
    tp, rank = (parallel_state.get_tensor_model_parallel_world_size(),
                parallel_state.get_tensor_model_parallel_rank())
    shard = padded_vocab // tp
    full = torch.randn(6, padded_vocab, generator=torch.Generator().manual_seed(7)) * 3
    full[:, vocab:] = float("-inf")
    vp = VocabParallel(parallel_state.get_tensor_model_parallel_group(), rank * shard, vocab)
    local = full[:, rank * shard:(rank + 1) * shard]
    gather = lambda t: torch.cat(all_gather_tp(t), dim=-1)
    expected_top_p = nucleus(full, 0.8)
    kth = full.topk(10, -1).values[:, -1:]
    # A nearly flat distribution: the nucleus holds far more than one round of 64 candidates.
    flat = full / 40
    flat_keep = nucleus(flat, 0.9)
    assert flat_keep.sum(-1).min() > 64
    tokens = torch.tensor([0, 5, vocab - 1, 17, 3, 9])
    return {
        "top_p_match": torch.equal(torch.isfinite(gather(vp.top_p_mask(local, 0.8))), expected_top_p),
        "top_k_match": torch.equal(torch.isfinite(gather(vp.top_k_mask(local, 10))), full >= kth),
        "top_p_wide_match": torch.equal(torch.isfinite(gather(vp.top_p_mask(flat[:, rank * shard:(rank + 1) * shard],
                                                                          0.9))), flat_keep),
        "argmax_match": torch.equal(vp.argmax(local), full.argmax(-1)),
        "log_softmax_err": (vp.log_softmax_at(local, tokens)
                            - full.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]).abs().max().item(),
    }


def all_gather_tp(t):
    group = parallel_state.get_tensor_model_parallel_group()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return parts


if __name__ == "__main__":
    main()
