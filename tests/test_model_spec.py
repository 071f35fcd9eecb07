"""What the model builder chooses for the hardware it runs on: the attention mask type and
mask format of each layer spec, training rows laid out for them, and the fusion flags.

Transformer Engine does not install on a machine without CUDA, so its spec cannot be built
here: the spec test stands Megatron's local spec (same structure) in for TE's, and checks
what ``layer_spec`` makes of it. The TE path has not run on any machine of this project.
"""

from __future__ import annotations

import pytest
import torch
from megatron.core.models.gpt import gpt_layer_specs
from megatron.core.transformer.enums import AttnMaskType

from autorlhf_nemo.algorithms.batch import make_sequence_batch, response_positions
from autorlhf_nemo.models import gpt


class _Config:  # what layer_spec reads of a TransformerConfig for the local spec
    num_layers, pipeline_model_parallel_size = 2, 1


def test_both_specs_use_the_padding_aware_mask_type(monkeypatch):
    monkeypatch.setattr(gpt, "get_num_layers_to_build", lambda config, pp_rank: 2)
    monkeypatch.setattr(gpt.parallel_state, "get_pipeline_model_parallel_rank", lambda: 0)
    local = gpt.layer_spec(_Config(), use_te=False)
    assert all(layer.submodules.self_attention.params["attn_mask_type"] == AttnMaskType.padding_causal
               for layer in local.layer_specs)
    stand_in = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    assert stand_in.submodules.self_attention.params["attn_mask_type"] == AttnMaskType.causal  # Megatron's own
    monkeypatch.setattr(gpt_layer_specs, "get_gpt_layer_with_transformer_engine_spec", lambda: stand_in)
    te = gpt.layer_spec(_Config(), use_te=True)
    assert te.submodules.self_attention.params["attn_mask_type"] == AttnMaskType.padding_causal


def test_attention_mask_formats():
    padding = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    local = gpt.attention_mask(padding, use_te=False)
    assert local.shape == (2, 1, 4, 4) and local.dtype == torch.bool
    expected = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(local[0, 0], expected)                # causal, and padding keys blocked
    left = gpt.attention_mask(torch.tensor([[0, 1, 1]]), use_te=False)[0, 0]
    assert left[:, 0].all() and not left[2, 1:].any()         # left padding: never attended to
    te = gpt.attention_mask(padding, use_te=True)
    assert te.shape == (2, 1, 1, 4)                            # TE: [b, 1, 1, s], True = padding
    assert torch.equal(te[:, 0, 0], torch.tensor([[False, False, False, True], [False, False, True, True]]))
    with pytest.raises(ValueError, match="real tokens must come first"):
        gpt.attention_mask(torch.tensor([[0, 1, 1]]), use_te=True)


def test_ppo_rows_put_real_tokens_first(monkeypatch):
    """make_sequence_batch turns left-padded prompts into rows that read prompt, response,
    padding (what TE's padding mask needs); response token t is predicted at response_index."""
    prompt_ids = torch.tensor([[0, 0, 7, 8], [5, 6, 7, 8]])
    prompt_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    response_ids = torch.tensor([[11, 12, 0], [21, 22, 23]])
    response_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-3.0, -4.0, -5.0]])
    batch = make_sequence_batch(prompt_ids, prompt_mask, response_ids, response_mask, old_logprobs=logprobs)
    assert batch["tokens"].tolist() == [[7, 8, 11, 12, 0, 0], [5, 6, 7, 8, 21, 22]]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 3, 3]
    assert batch["response_index"].tolist() == [[1, 2, 3], [3, 4, 5]] == response_positions(prompt_mask, 3).tolist()
    # the token after each response position is the response token it predicts
    following = torch.cat([batch["tokens"][:, 1:], torch.tensor([[0], [23]])], dim=1)
    assert torch.equal(following.gather(1, batch["response_index"]) * response_mask, response_ids)
    assert batch["old_logprobs"] is logprobs and batch["response_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    # Where Transformer Engine is the spec, the same rows come with TE's mask, accepted as they are.
    monkeypatch.setattr(gpt, "transformer_engine_available", lambda: True)
    te = make_sequence_batch(prompt_ids, prompt_mask, response_ids, response_mask)["attention_mask"]
    assert te.shape == (2, 1, 1, 6)
    assert te[:, 0, 0].tolist() == [[False, False, False, False, True, True], [False] * 6]


def test_fusion_flags_follow_the_kernels(monkeypatch):
    cpu = gpt.fusion_flags(use_te=False)
    assert not any(cpu.values())                                # this machine: CPU, nothing fused
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpt, "_imports", lambda module: False)
    assert not any(gpt.fusion_flags(use_te=False).values())    # a GPU without TE, apex or triton
    monkeypatch.setattr(gpt, "_imports", lambda module: True)
    monkeypatch.setattr(gpt, "_c_toolchain", lambda: False)     # triton without a compiler to build with
    assert not gpt.fusion_flags(use_te=True)["bias_activation_fusion"]
    monkeypatch.setattr(gpt, "_c_toolchain", lambda: True)
    assert gpt.fusion_flags(use_te=True) == {
        "bias_activation_fusion": True, "masked_softmax_fusion": True, "apply_rope_fusion": True,
        "gradient_accumulation_fusion": True, "persist_layer_norm": False}
    assert not gpt.fusion_flags(use_te=False)["apply_rope_fusion"]   # TE's kernel, TE's spec
    available = {"fused_weight_gradient_mlp_cuda"}                 # apex's wgrad kernel only
    monkeypatch.setattr(gpt, "_imports", lambda module: module in available)
    assert [k for k, on in gpt.fusion_flags(use_te=False).items() if on] == ["gradient_accumulation_fusion"]


def test_transformer_config_on_this_machine_fuses_nothing():
    from autorlhf_nemo.config.compose import compose_typed_config

    config = gpt.transformer_config(compose_typed_config([]))
    assert not (config.bias_activation_fusion or config.masked_softmax_fusion or config.apply_rope_fusion
                or config.gradient_accumulation_fusion or config.persist_layer_norm)
