"""Pure pieces of the checkpoint conversion (no process group)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from autorlhf_nemo.convert.hf_llama import _canonical, hf_config_from_model, model_config_from_hf
from autorlhf_nemo.convert.reader import CheckpointReader
from autorlhf_nemo.models.gpt import padded_vocab_size
from autorlhf_nemo.ops.vocab_parallel import mask_padded_vocab
from autorlhf_nemo.training.lm import causal_attention_mask, make_lm_batch

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
    back = hf_config_from_model(dict(m, params_dtype="bfloat16"))
    assert back["rope_scaling"]["factor"] == 8.0
    assert model_config_from_hf(back)["num_query_groups"] == 3


def test_non_llama_checkpoint_rejected():
    with pytest.raises(ValueError, match="Llama family only"):
        model_config_from_hf(dict(SMOLLM2_HF, model_type="gpt2"))


def test_transformer_engine_names_map_to_local_names():
    assert _canonical("decoder.layers.3.self_attention.linear_qkv.layer_norm_weight") == \
        "decoder.layers.3.input_layernorm.weight"
    assert _canonical("decoder.layers.0.mlp.linear_fc1.layer_norm_weight") == \
        "decoder.layers.0.pre_mlp_layernorm.weight"
    assert _canonical("decoder.layers.0.mlp.linear_fc1.weight") == "decoder.layers.0.mlp.linear_fc1.weight"


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
    mask = causal_attention_mask(torch.tensor([[0, 1, 1]]))[0, 0]  # True = blocked
    assert mask.tolist() == [[True, True, True], [True, False, True], [True, False, False]]
    batch = make_lm_batch(torch.tensor([[0, 5, 6, 7]]), torch.tensor([[0, 1, 1, 1]]))
    assert batch["position_ids"].tolist() == [[0, 0, 1]]
    assert batch["loss_mask"].tolist() == [[0.0, 1.0, 1.0]]
    assert batch["labels"].tolist() == [[5, 6, 7]]
