"""SmolLM2-135M-Instruct at TP1: Megatron vs transformers on real chat prompts.

Records, per prompt: max |logit difference| over all prompt positions, the
teacher-forced argmax tokens of both, and 8 greedy tokens decoded by each
(Megatron recomputes the whole sequence per token: no cache involved).
"""

import argparse

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.convert import resolve_hf_checkpoint
from autorlhf_nemo.convert.hf_llama import load_hf_checkpoint
from autorlhf_nemo.generation import Generator, SamplingParams
from autorlhf_nemo.generation.engine import left_pad
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.models.gpt import attention_mask
from autorlhf_nemo.versions import chat_prompt_ids

PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the ocean.",
    "List three prime numbers.",
]


def megatron_logits(model, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    mask = attention_mask(torch.ones_like(ids))
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    return model(ids, positions, mask)[..., :vocab].float()


def batched_generation(model, hf, tokenizer, vocab):
    """32 greedy tokens for chat prompts of different lengths in one left-padded batch,
    with the KV-cache engine and with transformers' generate; then a stop string."""
    chats = [[{"role": "user", "content": p}] for p in PROMPTS + ["Hi"]]
    prompts = [chat_prompt_ids(tokenizer, c) for c in chats]
    generator = Generator(model, vocab, tokenizer.pad_token_id, tokenizer=tokenizer)
    eos = tokenizer.eos_token_id
    ours = generator.generate(prompts, SamplingParams(max_new_tokens=32, greedy=True, eos_token_ids=[eos]))
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False,
                             eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)[:, ids.shape[1]:]
    stopped = generator.generate(prompts, SamplingParams(max_new_tokens=32, greedy=True,
                                                         eos_token_ids=[eos], stop_strings=[","]))
    return {
        "prompt_lengths": [len(p) for p in prompts],
        "ours": ours.responses(), "ours_reasons": ours.stop_reasons,
        "theirs": theirs.tolist(),
        "stopped_texts": [tokenizer.decode(r) for r in stopped.responses()],
        "stopped_reasons": stopped.stop_reasons,
        "full_texts": [tokenizer.decode(r) for r in ours.responses()],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cfg = compose_typed_config(["model=smollm2_135m"])
    initialize(cfg)
    m = cfg.model
    path = resolve_hf_checkpoint(m.hf_checkpoint)
    model = build_model(cfg).eval()
    load_hf_checkpoint(model, path, m)
    hf = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)

    records = []
    with torch.no_grad():
        for prompt in PROMPTS:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, return_tensors="pt").input_ids
            ours, theirs = megatron_logits(model, ids, m.vocab_size), hf(ids).logits
            greedy = ids
            for _ in range(8):
                next_id = megatron_logits(model, greedy, m.vocab_size)[:, -1].argmax(-1, keepdim=True)
                greedy = torch.cat([greedy, next_id], dim=1)
            hf_greedy = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                    do_sample=False, pad_token_id=tokenizer.pad_token_id)
            records.append({
                "prompt_tokens": ids.shape[1],
                "max_abs_diff": (ours - theirs).abs().max().item(),
                "argmax_ours": ours.argmax(-1), "argmax_hf": theirs.argmax(-1),
                "greedy_ours": greedy[0, ids.shape[1]:].tolist(),
                "greedy_hf": hf_greedy[0, ids.shape[1]:].tolist(),
                "greedy_text": tokenizer.decode(greedy[0, ids.shape[1]:]),
            })
        # A pretrained model predicts plain English well (a random one: ~ln(49152) = 10.8 nats).
        ids = tokenizer("The quick brown fox jumps over the lazy dog. It was a sunny day in the park.",
                        return_tensors="pt").input_ids
        logp = torch.log_softmax(megatron_logits(model, ids, m.vocab_size)[0, :-1], -1)
        english_nll = -logp.gather(-1, ids[0, 1:, None]).mean().item()
    result = {"prompts": records, "english_nll": english_nll}
    result.update(batched_generation(model, hf, tokenizer, m.vocab_size))
    torch.save(result, args.out)
    shutdown()


if __name__ == "__main__":
    main()
