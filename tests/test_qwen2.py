"""Qwen2 (Llama plus q/k/v projection biases) against transformers: logits at TP1 and TP2,
HF -> Megatron -> HF bit-identical with the biases, greedy generation token for token."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.convert.hf_llama import check_checkpoint_biases, model_config_from_checkpoint
from autorlhf_nemo.generation.engine import left_pad
from helpers import torchrun
from tiny_model import TINY, make_batch, make_tiny_qwen2

PROMPTS = [[5, 17, 99, 3, 44], [42, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [200]]
NEW = 20
LAYOUTS = {"tp1": (1, "parallel=single"), "tp2": (2, "parallel=tp2")}


class Qwen2Runs:
    def __init__(self, root):
        self.root = root
        self.hf_dir = root / "hf"
        # Seed 20: varied greedy continuations (8-15 distinct tokens of 20 per row) whose
        # top-2 logits never come closer than 8e-3, far above the 1e-4 logit tolerance.
        self.hf = make_tiny_qwen2(self.hf_dir, seed=20)
        self.batch = make_batch()
        torch.save(self.batch, root / "batch.pt")
        (root / "prompts.json").write_text(json.dumps(PROMPTS))
        ids, mask = left_pad(PROMPTS, 0)
        with torch.no_grad():
            self.reference = self.hf(self.batch[:, :-1]).logits
            self.hf_greedy = self.hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                                              pad_token_id=0, eos_token_id=None)[:, ids.shape[1]:]
        self._cache = {}

    def layout(self, name):
        if name not in self._cache:
            nproc, override = LAYOUTS[name]
            out = self.root / f"{name}.pt"
            torchrun("qwen2_checks.py", nproc, [
                "--hf", str(self.hf_dir), "--batch", str(self.root / "batch.pt"),
                "--prompts", str(self.root / "prompts.json"), "--new-tokens", str(NEW),
                "--export", str(self.export_dir(name)), "--out", str(out),
                "model=tiny_qwen2", "train.seq_length=16", override])
            self._cache[name] = torch.load(out, weights_only=False)
        return self._cache[name]

    def export_dir(self, name):
        return self.root / f"export_{name}"


@pytest.fixture(scope="session")
def qwen2(tmp_path_factory):
    return Qwen2Runs(tmp_path_factory.mktemp("qwen2"))


def test_tiny_qwen2_config_is_the_checkpoints(qwen2):
    """conf/model/tiny_qwen2.yaml is what model_config_from_hf reads from the checkpoint."""
    from_checkpoint = model_config_from_checkpoint(qwen2.hf_dir, "tiny_qwen2")
    assert from_checkpoint["add_qkv_bias"] and from_checkpoint["tie_word_embeddings"]
    assert from_checkpoint["rotary_base"] == 1e6 and from_checkpoint["norm_epsilon"] == 1e-6
    composed = dataclasses.asdict(compose_typed_config(["model=tiny_qwen2"]).model)
    assert {k: composed[k] for k in from_checkpoint} == dict(from_checkpoint, kv_channels=None)
    assert from_checkpoint["kv_channels"] == TINY["hidden_size"] // TINY["num_attention_heads"]


def _model(**fields):
    """The tiny Qwen2's ModelConfig with ``fields`` changed."""
    return dataclasses.replace(compose_typed_config(["model=tiny_qwen2"]).model, **fields)


def test_checkpoint_biases_must_match_the_model():
    names = [f"model.layers.0.self_attn.{p}_proj.{k}" for p in "qkvo" for k in ("weight", "bias")
             if (p, k) != ("o", "bias")]
    check_checkpoint_biases(names, _model(add_qkv_bias=True))
    with pytest.raises(ValueError, match="set model.add_qkv_bias=true"):
        check_checkpoint_biases(names, _model(add_qkv_bias=False))
    with pytest.raises(ValueError, match="set model.add_qkv_bias=false"):
        check_checkpoint_biases([n for n in names if n.endswith("weight")], _model(add_qkv_bias=True))
    with pytest.raises(ValueError, match=r"cannot hold \(model.layers.0.self_attn.o_proj.bias\)"):
        check_checkpoint_biases([*names, "model.layers.0.self_attn.o_proj.bias"], _model(add_qkv_bias=True))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_match_transformers(qwen2, layout):
    result = qwen2.layout(layout)
    assert result["bias_params"] == [f"decoder.layers.{i}.self_attention.linear_qkv.bias"
                                     for i in range(TINY["num_hidden_layers"])]
    assert result["logits"].shape == qwen2.reference.shape
    assert (result["logits"] - qwen2.reference).abs().max().item() <= 1e-4


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hf_round_trip_is_bit_identical(qwen2, layout):
    result = qwen2.layout(layout)
    original = load_file(qwen2.hf_dir / "model.safetensors")
    exported = load_file(qwen2.export_dir(layout) / "model.safetensors")
    assert any(name.endswith("q_proj.bias") for name in original)
    for weights in (result["weights"], exported):
        assert set(weights) == set(original)
        for name, tensor in original.items():
            assert torch.equal(weights[name], tensor), name
    config = json.loads((qwen2.export_dir(layout) / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("qwen2", ["Qwen2ForCausalLM"])
    reloaded = AutoModelForCausalLM.from_pretrained(qwen2.export_dir(layout)).eval()
    assert isinstance(reloaded, Qwen2ForCausalLM)
    with torch.no_grad():
        assert torch.equal(reloaded(qwen2.batch[:, :-1]).logits, qwen2.reference)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_greedy_generation_matches_transformers(qwen2, layout):
    assert min(len(set(row.tolist())) for row in qwen2.hf_greedy) > 5  # non-degenerate continuations
    assert torch.equal(qwen2.layout(layout)["greedy"], qwen2.hf_greedy)
