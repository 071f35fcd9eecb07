"""One function builds the policy network: TransformerConfig + layer spec + GPTModel.

Llama family: RMSNorm, SwiGLU MLP, rotary embeddings, grouped-query
attention, no biases (Qwen2: on the QKV projections), tied or untied
embeddings.  The Transformer Engine spec is used where TE imports (GPU
clusters); the local spec (plain PyTorch + Megatron tensor-parallel layers,
our sequence-parallel RMSNorm) otherwise.

Batches are padded, so self-attention uses the padding-aware ``padding_causal``
mask type in both specs, with the mask each expects (:func:`attention_mask`).
Fusion flags are on only where their kernels exist (:func:`fusion_flags`).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from autorlhf_nemo.config.schema import ModelConfig, RootConfig
from autorlhf_nemo.models.norm import RMSNorm
from autorlhf_nemo.parallel.runtime import compute_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def transformer_engine_available() -> bool:
    """TE needs CUDA; on CPU the local spec is the only choice."""
    return torch.cuda.is_available() and _imports("transformer_engine")


def _imports(module: str) -> bool:
    """Whether ``module`` imports here (installed and loadable: a CUDA extension built for
    another torch fails here, not in the middle of a training step)."""
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or a broken build's OSError / RuntimeError
        return False
    return True


def _c_toolchain() -> bool:
    """A C compiler and the Python headers: triton builds its kernel launcher with them."""
    compiler = os.environ.get("CC") or "cc"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(compiler) is not None and headers.is_file()


def fusion_flags(use_te: bool) -> dict[str, bool]:
    """TransformerConfig's fusion flags, each on only where its kernel exists (off on CPU):

        bias_activation_fusion        Megatron's fused SwiGLU, compiled by torch.compile: CUDA, triton,
                                      and the C compiler and Python headers triton builds with
        masked_softmax_fusion         apex's fused (masked) softmax kernels (local spec attention)
        apply_rope_fusion             Transformer Engine's fused rotary embedding
        gradient_accumulation_fusion  apex's fused weight-gradient accumulation into main_grad; Megatron's
                                      local linear layers (the value head, the local spec) require it
        persist_layer_norm            apex's persistent LayerNorm: LayerNorm only, these models use RMSNorm
    """
    cuda = torch.cuda.is_available()
    return {
        "bias_activation_fusion": cuda and _imports("triton") and _c_toolchain(),
        # padding_causal attention takes the masked kernel (the upper-triangular one is `causal`'s)
        "masked_softmax_fusion": cuda and _imports("scaled_masked_softmax_cuda") and _imports("scaled_softmax_cuda"),
        "apply_rope_fusion": cuda and use_te,
        "gradient_accumulation_fusion": cuda and _imports("fused_weight_gradient_mlp_cuda"),
        "persist_layer_norm": False,
    }


def padded_vocab_size(vocab_size: int, divisible_by: int) -> int:
    """Round the vocabulary up to a multiple of ``divisible_by``.

    Unlike Megatron-LM (multiple of divisible_by x TP) the padded size does not
    depend on the layout, so distributed checkpoints reshard across TP sizes;
    validation requires it to be divisible by TP.
    """
    return -(-vocab_size // divisible_by) * divisible_by


def transformer_config(cfg: RootConfig, use_te: bool | None = None) -> TransformerConfig:
    """TransformerConfig for ``cfg.model`` at layout ``cfg.parallel`` (``use_te``: the layer
    spec it serves; default: Transformer Engine where it imports)."""
    if use_te is None:
        use_te = transformer_engine_available()
    m, p, recompute = cfg.model, cfg.parallel, cfg.train.recompute
    dtype = DTYPES[m.params_dtype]
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.kv_channels or m.hidden_size // m.num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=m.add_qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        context_parallel_size=p.context_parallel_size,
        sequence_parallel=p.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
        **fusion_flags(use_te),
        # The loss function returns (sum, num_tokens): gradients are divided by
        # the global token count, independent of micro-batch count and DP size.
        calculate_per_token_loss=True,
        # Activation recomputation: "full" keeps each layer's input and recomputes the layer
        # in backward (one layer per checkpoint); "selective" recomputes core attention.
        recompute_granularity=recompute,
        recompute_method="uniform" if recompute == "full" else None,
        recompute_num_layers=1 if recompute == "full" else None,
    )


def layer_spec(config: TransformerConfig, use_te: bool | None = None) -> ModuleSpec | TransformerBlockSubmodules:
    """The decoder spec for this rank's pipeline stage, with padding-aware self-attention."""
    if use_te is None:
        use_te = transformer_engine_available()
    if use_te:
        from megatron.core.models.gpt import gpt_layer_specs

        return _padding_aware(gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec())
    layer = _padding_aware(get_gpt_layer_local_spec(normalization="RMSNorm"))
    layer.submodules.input_layernorm = RMSNorm
    layer.submodules.pre_mlp_layernorm = RMSNorm
    num_layers = get_num_layers_to_build(config, pp_rank=parallel_state.get_pipeline_model_parallel_rank())
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=RMSNorm)


def _padding_aware(layer: ModuleSpec) -> ModuleSpec:
    """Self-attention with the ``padding_causal`` mask type: the ``causal`` type lets
    Transformer Engine (and the fused causal softmax) ignore the padding mask."""
    layer.submodules.self_attention.params["attn_mask_type"] = AttnMaskType.padding_causal
    return layer


def attention_mask(padding_mask: torch.Tensor, use_te: bool | None = None) -> torch.Tensor:
    """The attention mask a GPTModel of this spec takes for a batch with ``padding_mask``
    [b, s] (1 = real token); True = blocked.

    Local spec: [b, 1, s, s], position i attends to real tokens j <= i (any padding).
    Transformer Engine: [b, 1, 1, s], True on padding; TE applies the causal part itself
    and its fused attention reads the mask as sequence lengths, so the real tokens of
    each row must come first (right padding, as ``algorithms.batch.make_sequence_batch`` lays rows out).
    ``use_te`` defaults to what ``build_model`` builds by default: pass the same value
    to both when choosing a spec by hand (a local-spec model given TE's mask would
    attend without the causal part)."""
    if use_te is None:
        use_te = transformer_engine_available()
    real = padding_mask.bool()
    if use_te:
        if bool((real[:, 1:] & ~real[:, :-1]).any()):
            raise ValueError("Transformer Engine reads a padding mask as sequence lengths: each row's "
                             "real tokens must come first (pad on the right)")
        return ~real[:, None, None, :]
    s = real.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=real.device).tril()
    return ~(causal[None] & real[:, None, :]).unsqueeze(1)


def build_model(cfg: RootConfig, use_te: bool | None = None, on_meta: bool = False) -> GPTModel:
    """The GPTModel chunk of the current rank (its pipeline stage, its TP shard).

    Needs Megatron's parallel state (see ``parallel.runtime.initialize``).
    Weights are randomly initialised; load real ones with ``convert.hf_llama``.
    ``on_meta``: shapes only, no memory (the planner); always the local spec, whose
    parameter shapes equal Transformer Engine's and which never touches a GPU.
    """
    if use_te is None:
        use_te = transformer_engine_available() and not on_meta
    config = transformer_config(cfg, use_te)
    if on_meta:
        # Megatron's GPU path allocates on the current CUDA device explicitly; its CPU
        # path follows the default device, which the meta context sets (initialisation
        # stays on: it is what marks parameters as tensor-parallel, and costs nothing on meta).
        config.use_cpu_initialization = True
        with torch.device("meta"):
            return _gpt_model(config, cfg.model, use_te=False)
    return _gpt_model(config, cfg.model, use_te).to(compute_device())


def _gpt_model(config: TransformerConfig, m: ModelConfig, use_te: bool | None) -> GPTModel:
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(config, use_te),
        vocab_size=padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by),
        max_sequence_length=m.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=m.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=m.rotary_base,
        rope_scaling=m.rope_scaling_factor is not None,
        rope_scaling_factor=m.rope_scaling_factor or 8.0,
        pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
    )
