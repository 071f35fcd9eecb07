"""Typed configuration schemas, registered with Hydra's ConfigStore.

Every default lives here, once.  The YAML files under ``conf/`` only override
these fields; a key that is not declared here is rejected when the config is
composed (OmegaConf struct mode) and again by :func:`validate.validate_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModelConfig:
    """A Llama-family decoder (RMSNorm, SwiGLU, RoPE, grouped-query attention)."""

    name: str = MISSING
    num_layers: int = MISSING
    hidden_size: int = MISSING
    ffn_hidden_size: int = MISSING
    num_attention_heads: int = MISSING
    # Key/value heads (grouped-query attention); equal to num_attention_heads for MHA.
    num_query_groups: int = MISSING
    vocab_size: int = MISSING
    # Per-head dimension; None means hidden_size // num_attention_heads.
    kv_channels: Optional[int] = None
    max_position_embeddings: int = 2048
    rotary_base: float = 10000.0
    # Llama-3.1 style RoPE frequency scaling (factor); None disables it.
    rope_scaling_factor: Optional[float] = None
    norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = False
    # The embedding table is padded to a multiple of this times the TP size.
    make_vocab_size_divisible_by: int = 128
    # float32 | bfloat16 | float16
    params_dtype: str = "float32"
    init_method_std: float = 0.02
    # Hugging Face checkpoint directory (safetensors + config.json), the name of a
    # packaged model ("smollm2-135m-instruct"), or None for random initialization.
    hf_checkpoint: Optional[str] = None


@dataclass
class ParallelConfig:
    """Megatron parallel layout. world = TP x PP x CP x DP."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1
    # Split activations along the sequence in the non-TP regions; needs TP > 1.
    sequence_parallel: bool = False
    # Shard optimizer states across data-parallel ranks (ZeRO-1).
    use_distributed_optimizer: bool = False
    # Expected number of processes. None: taken from the launcher (WORLD_SIZE).
    world_size: Optional[int] = None
    # auto (nccl with CUDA, gloo without) | nccl | gloo
    backend: str = "auto"
    # Timeout for collective operations, minutes.
    timeout_minutes: int = 30


@dataclass
class TrainConfig:
    """Batch geometry and optimizer of a training step."""

    seed: int = 1234
    micro_batch_size: int = 1
    # Sequences per optimizer step over all data-parallel ranks.
    global_batch_size: int = 8
    seq_length: int = 128
    # adam | sgd
    optimizer: str = "adam"
    lr: float = 1.0e-5
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1.0e-8
    # Clip the global gradient norm to this value; 0 disables clipping.
    clip_grad: float = 1.0


@dataclass
class RootConfig:
    model: ModelConfig = MISSING
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Where runs write logs and checkpoints.
    run_dir: str = "runs/${model.name}"


def register_configs() -> None:
    """Register the schemas so that YAML files in conf/ are validated against them."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RootConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="parallel", name="base_parallel", node=ParallelConfig)
