"""SmolLM2-135M-Instruct at TP1: Megatron vs transformers on real chat prompts.

Records, per prompt: max |logit difference| over all prompt positions, the
teacher-forced argmax tokens of both, and 8 greedy tokens decoded by each
(Megatron recomputes the whole sequence per token: no cache involved).
"""

import argparse

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from autorlhf_nemo.config.compose import compose_config
from autorlhf_nemo.config.validate import to_container
from autorlhf_nemo.convert import resolve_hf_checkpoint
from autorlhf_nemo.convert.hf_llama import load_hf_checkpoint
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.training.lm import causal_attention_mask

PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the ocean.",
    "List three prime numbers.",
]


def megatron_logits(model, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    mask = causal_attention_mask(torch.ones_like(ids))
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    return model(ids, positions, mask)[..., :vocab].float()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cfg = compose_config(["model=smollm2_135m"])
    initialize(cfg)
    m = to_container(cfg)["model"]
    path = resolve_hf_checkpoint(m["hf_checkpoint"])
    model = build_model(cfg).eval()
    load_hf_checkpoint(model, path, m)
    hf = LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)

    records = []
    with torch.no_grad():
        for prompt in PROMPTS:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, return_tensors="pt").input_ids
            ours, theirs = megatron_logits(model, ids, m["vocab_size"]), hf(ids).logits
            greedy = ids
            for _ in range(8):
                next_id = megatron_logits(model, greedy, m["vocab_size"])[:, -1].argmax(-1, keepdim=True)
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
        logp = torch.log_softmax(megatron_logits(model, ids, m["vocab_size"])[0, :-1], -1)
        english_nll = -logp.gather(-1, ids[0, 1:, None]).mean().item()
    torch.save({"prompts": records, "english_nll": english_nll}, args.out)
    shutdown()


if __name__ == "__main__":
    main()
