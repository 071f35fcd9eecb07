"""One function builds the policy network: TransformerConfig + layer spec + GPTModel.

Llama family: RMSNorm, SwiGLU MLP, rotary embeddings, grouped-query
attention, no biases, tied or untied embeddings.  The Transformer Engine spec
is used where TE imports (GPU clusters); the local spec (plain PyTorch +
Megatron tensor-parallel layers, our sequence-parallel RMSNorm) otherwise.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from autorlhf_nemo.config.validate import to_container
from autorlhf_nemo.models.norm import RMSNorm

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def transformer_engine_available() -> bool:
    """TE needs CUDA; on CPU the local spec is the only choice."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def padded_vocab_size(vocab_size: int, divisible_by: int) -> int:
    """Round the vocabulary up to a multiple of ``divisible_by``.

    Unlike Megatron-LM (multiple of divisible_by x TP) the padded size does not
    depend on the layout, so distributed checkpoints reshard across TP sizes;
    validation requires it to be divisible by TP.
    """
    return -(-vocab_size // divisible_by) * divisible_by


def transformer_config(cfg: Mapping[str, Any] | Any) -> TransformerConfig:
    """TransformerConfig for ``cfg.model`` at layout ``cfg.parallel``."""
    values = to_container(cfg)
    m, p, recompute = values["model"], values["parallel"], values["train"]["recompute"]
    dtype = DTYPES[m["params_dtype"]]
    return TransformerConfig(
        num_layers=m["num_layers"],
        hidden_size=m["hidden_size"],
        ffn_hidden_size=m["ffn_hidden_size"],
        num_attention_heads=m["num_attention_heads"],
        num_query_groups=m["num_query_groups"],
        kv_channels=m["kv_channels"] or m["hidden_size"] // m["num_attention_heads"],
        normalization="RMSNorm",
        layernorm_epsilon=m["norm_epsilon"],
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=m["add_qkv_bias"],
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m["init_method_std"],
        tensor_model_parallel_size=p["tensor_model_parallel_size"],
        pipeline_model_parallel_size=p["pipeline_model_parallel_size"],
        context_parallel_size=p["context_parallel_size"],
        sequence_parallel=p["sequence_parallel"],
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
        # Fused kernels are CUDA-only; TE/apex provide them on GPU.
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
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
    """The decoder spec for this rank's pipeline stage."""
    if use_te is None:
        use_te = transformer_engine_available()
    if use_te:
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        return get_gpt_layer_with_transformer_engine_spec()
    layer = get_gpt_layer_local_spec(normalization="RMSNorm")
    layer.submodules.input_layernorm = RMSNorm
    layer.submodules.pre_mlp_layernorm = RMSNorm
    num_layers = get_num_layers_to_build(config, pp_rank=parallel_state.get_pipeline_model_parallel_rank())
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=RMSNorm)


def build_model(cfg: Mapping[str, Any] | Any, use_te: bool | None = None, on_meta: bool = False) -> GPTModel:
    """The GPTModel chunk of the current rank (its pipeline stage, its TP shard).

    Needs Megatron's parallel state (see ``parallel.runtime.initialize``).
    Weights are randomly initialised; load real ones with ``convert.hf_llama``.
    ``on_meta``: shapes only, no memory (the planner); always the local spec, whose
    parameter shapes equal Transformer Engine's and which never touches a GPU.
    """
    values = to_container(cfg)
    m = values["model"]
    config = transformer_config(values)
    if on_meta:
        # Megatron's GPU path allocates on the current CUDA device explicitly; its CPU
        # path follows the default device, which the meta context sets (initialisation
        # stays on: it is what marks parameters as tensor-parallel, and costs nothing on meta).
        config.use_cpu_initialization = True
        with torch.device("meta"):
            return _gpt_model(config, m, use_te=False)
    model = _gpt_model(config, m, use_te)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model


def _gpt_model(config: TransformerConfig, m: Mapping[str, Any], use_te: bool | None) -> GPTModel:
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(config, use_te),
        vocab_size=padded_vocab_size(m["vocab_size"], m["make_vocab_size_divisible_by"]),
        max_sequence_length=m["max_position_embeddings"],
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=m["tie_word_embeddings"],
        position_embedding_type="rope",
        rotary_base=m["rotary_base"],
        rope_scaling=m["rope_scaling_factor"] is not None,
        rope_scaling_factor=m["rope_scaling_factor"] or 8.0,
        pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
    )
