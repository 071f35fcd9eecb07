"""Pure pieces of the checkpoint conversion (no process group)."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from autorlhf_nemo.config.schema import ModelConfig
from autorlhf_nemo.convert.hf_llama import _canonical, hf_config_from_model, model_config_from_hf
from autorlhf_nemo.convert.reader import CheckpointReader
from autorlhf_nemo.models.gpt import attention_mask, padded_vocab_size
from autorlhf_nemo.ops.vocab_parallel import mask_padded_vocab
from autorlhf_nemo.training.lm import make_lm_batch

SMOLLM2_HF = {  # as transformers 5 writes it (rope_parameters) for SmolLM2-135M-Instruct
    "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
}


def test_model_config_from_hf_smollm2():
    m = model_config_from_hf(SMOLLM2_HF, "smollm2")
    assert (m["num_layers"], m["hidden_size"], m["num_attention_heads"], m["num_query_groups"]) == (30, 576, 9, 3)
    assert m["rotary_base"] == 100000.0 and m["tie_word_embeddings"] and m["kv_channels"] == 64
    assert m["rope_scaling_factor"] is None


def test_llama31_rope_scaling_and_round_trip_of_config():
    hf = dict(SMOLLM2_HF, rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0})
    hf.pop("rope_parameters")
    m = model_config_from_hf(hf)
    assert m["rope_scaling_factor"] == 8.0 and m["rotary_base"] == 500000.0
    back = hf_config_from_model(ModelConfig(**m, params_dtype="bfloat16"))
    assert back["rope_scaling"]["factor"] == 8.0
    assert model_config_from_hf(back)["num_query_groups"] == 3


def test_non_llama_checkpoint_rejected():
    with pytest.raises(ValueError, match="Llama family only"):
        model_config_from_hf(dict(SMOLLM2_HF, model_type="gpt2"))


QWEN2_HF = {  # Qwen2-0.5B-Instruct's config.json (the fields the converter reads)
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "vocab_size": 151936, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "tie_word_embeddings": True, "hidden_act": "silu", "use_sliding_window": False,
    "sliding_window": 32768, "max_window_layers": 21,
}


def test_qwen2_config_has_qkv_biases_and_round_trips():
    m = model_config_from_hf(QWEN2_HF, "qwen2")
    assert m["add_qkv_bias"] and m["tie_word_embeddings"] and m["kv_channels"] == 64
    assert (m["rotary_base"], m["norm_epsilon"], m["num_query_groups"]) == (1e6, 1e-6, 2)
    assert not model_config_from_hf(SMOLLM2_HF)["add_qkv_bias"]
    back = hf_config_from_model(ModelConfig(**m, params_dtype="bfloat16"))
    assert (back["model_type"], back["architectures"], back["use_sliding_window"]) == \
        ("qwen2", ["Qwen2ForCausalLM"], False)
    assert model_config_from_hf(back, "qwen2") == m
    llama = hf_config_from_model(ModelConfig(**model_config_from_hf(SMOLLM2_HF), params_dtype="float32"))
    assert (llama["model_type"], llama["attention_bias"], llama["mlp_bias"]) == ("llama", False, False)


@pytest.mark.parametrize("hf,named", [
    (dict(QWEN2_HF, use_sliding_window=True), "use_sliding_window: true"),
    (dict(SMOLLM2_HF, attention_bias=True), "attention_bias: true"),
    (dict(SMOLLM2_HF, mlp_bias=True), "mlp_bias: true"),
    (dict(SMOLLM2_HF, model_type="mistral", attention_bias=True), "attention_bias: true"),
    (dict(SMOLLM2_HF, model_type="mistral", mlp_bias=True), "mlp_bias: true"),
    (dict(SMOLLM2_HF, model_type="mistral", sliding_window=4096), "sliding_window: 4096"),
    (dict(SMOLLM2_HF, hidden_act="gelu"), "hidden_act: 'gelu'"),
    (dict(QWEN2_HF, rope_scaling={"type": "yarn", "factor": 4.0}), "rope_scaling type 'yarn'"),
])
def test_configs_the_model_cannot_represent_are_rejected(hf, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        model_config_from_hf(hf)


def test_every_unsupported_feature_is_named_at_once():
    with pytest.raises(ValueError) as error:
        model_config_from_hf(dict(SMOLLM2_HF, attention_bias=True, mlp_bias=True))
    assert "attention_bias: true" in str(error.value) and "mlp_bias: true" in str(error.value)


def test_accepted_variants_of_the_same_fields():
    model_config_from_hf(dict(QWEN2_HF, use_sliding_window=False, sliding_window=4096))  # unused window
    model_config_from_hf(dict(SMOLLM2_HF, model_type="mistral", sliding_window=None))
    model_config_from_hf(dict(SMOLLM2_HF, attention_bias=False, mlp_bias=False))


def test_transformer_engine_names_map_to_local_names():
    assert _canonical("decoder.layers.3.self_attention.linear_qkv.layer_norm_weight") == \
        "decoder.layers.3.input_layernorm.weight"
    assert _canonical("decoder.layers.0.mlp.linear_fc1.layer_norm_weight") == \
        "decoder.layers.0.pre_mlp_layernorm.weight"
    assert _canonical("decoder.layers.0.mlp.linear_fc1.weight") == "decoder.layers.0.mlp.linear_fc1.weight"
    # Both specs name the fused QKV bias alike (Qwen2).
    assert _canonical("decoder.layers.1.self_attention.linear_qkv.bias") == \
        "decoder.layers.1.self_attention.linear_qkv.bias"


def test_reader_slices_sharded_checkpoint(tmp_path):
    a, b = torch.arange(20.0).view(4, 5), torch.arange(6.0)
    save_file({"a": a}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": b}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    reader = CheckpointReader(tmp_path)
    assert torch.equal(reader.read("a", rows=(1, 3)), a[1:3])
    assert torch.equal(reader.read("a", cols=(2, 4)), a[:, 2:4])
    assert torch.equal(reader.read("b", rows=(2, 5)), b[2:5])
    with pytest.raises(KeyError, match="not found"):
        reader.read("c")


def test_reader_explains_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.hf_checkpoint"):
        CheckpointReader(tmp_path)


def test_vocab_padding_is_layout_independent_and_masked():
    assert padded_vocab_size(250, 16) == 256
    assert padded_vocab_size(49152, 128) == 49152
    logits = torch.zeros(2, 3, 128)  # TP rank 1 of 2 for a 250-token vocab padded to 256
    masked = mask_padded_vocab(logits, 250, vocab_start=128)
    assert torch.isinf(masked[..., 122:]).all() and torch.isfinite(masked[..., :122]).all()
    assert mask_padded_vocab(logits, 250, vocab_start=0) is logits


def test_causal_mask_with_left_padding():
    mask = attention_mask(torch.tensor([[0, 1, 1]]), use_te=False)[0, 0]  # local spec; True = blocked
    assert mask.tolist() == [[True, True, True], [True, False, True], [True, False, False]]
    batch = make_lm_batch(torch.tensor([[0, 5, 6, 7]]), torch.tensor([[0, 1, 1, 1]]))
    assert batch["position_ids"].tolist() == [[0, 0, 1]]
    assert batch["loss_mask"].tolist() == [[0.0, 1.0, 1.0]]
    assert batch["labels"].tolist() == [[5, 6, 7]]
