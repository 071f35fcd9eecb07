"""Typed configuration schemas, registered with Hydra's ConfigStore.

Every default lives here, once.  The YAML files under ``conf/`` only override
these fields; a key that is not declared here is rejected when the config is
composed (OmegaConf struct mode) and again by :func:`validate.validate_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


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
    # Biases on the query/key/value projections only (Qwen2); no other linear layer has one.
    add_qkv_bias: bool = False
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
    # Context parallelism is not implemented yet: validation accepts only 1 (the planner counts with it).
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
    # Learning-rate schedule over optimizer steps: linear warm-up from 0, then
    # constant | linear | cosine decay to min_lr by lr_decay_steps (None: the run's last step).
    lr_warmup_steps: int = 0
    lr_decay_style: str = "constant"
    lr_decay_steps: Optional[int] = None
    # RL iterations (generate, score, learn) of an algorithm run.
    total_steps: int = 100
    # Evaluate (greedy or sampled on the task's held-out prompts) every N steps; 0: only first and last.
    eval_every: int = 0
    # Activation recomputation in training forwards: null (keep all activations) |
    # selective (recompute core attention) | full (keep only each layer's input, recompute the layer).
    recompute: Optional[str] = None


@dataclass
class SamplingConfig:
    """Rollout sampling (see generation.SamplingParams)."""

    max_new_tokens: int = 32
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class AlgorithmConfig:
    """PPO (trlX / NeMo-Aligner defaults where they agree)."""

    name: str = "ppo"
    rollouts_per_step: int = 64       # prompts sampled per step, over all DP ranks
    ppo_epochs: int = 4
    minibatches: int = 1              # optimizer steps per epoch
    init_kl_coef: float = 0.05
    target_kl: Optional[float] = None  # adaptive KL controller when set, fixed otherwise
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    clip_ratio: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 1.0
    entropy_coef: float = 0.0
    # Rewards: clip scores to [-clip_reward, clip_reward] (None: off), then optionally
    # scale by the running std ("running") of all scores seen so far.
    clip_reward: Optional[float] = 10.0
    scale_reward: Optional[str] = None
    whiten_advantages: bool = True
    # Reference model: top layers trained and copied for the reference; the frozen
    # trunk below is shared. -1: all layers trained, the reference is a full copy.
    num_layers_unfrozen: int = -1
    # With a frozen trunk (and PP=1): run it once per rollout and reuse its output for the
    # reference and every learning epoch (trlX's hydra forward); off: full forwards.
    cache_frozen_trunk: bool = True
    # Keep the full reference copy in CPU memory between uses (GPU runs).
    offload_reference: bool = False
    value_head_seed: int = 1


@dataclass
class TaskConfig:
    """Prompts, reward and sampling of an RL task (see autorlhf_nemo.tasks)."""

    # randomwalks | sentiment | custom (prompts and reward_fn given to autorlhf_nemo.train)
    name: str = "custom"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Held-out prompts scored at each evaluation.
    num_eval_prompts: int = 64
    # Wrap prompts in the tokenizer's chat template (instruct models).
    chat_template: bool = False
    # randomwalks: steps of next-token pretraining on the walks before RL, walks per step
    # (over all data-parallel ranks; each rank's share is cut into train.micro_batch_size
    # micro-batches where that divides it, else taken as one).
    pretrain_steps: int = 0
    pretrain_lr: float = 3.0e-3
    pretrain_batch_size: int = 96


@dataclass
class CheckpointConfig:
    # Save every N steps (0: only at the end). Checkpoints go to <run_dir>/checkpoints.
    save_every: int = 0
    keep_last: int = 2
    # Continue from the newest complete checkpoint in run_dir when there is one.
    resume: bool = True
    # Export the final policy as a Hugging Face safetensors checkpoint (<run_dir>/hf_export).
    export_hf: bool = True


@dataclass
class LoggingConfig:
    progress_bar: bool = True
    tensorboard: bool = True
    # Weights & Biases (needs `pip install wandb`; offline mode works without network).
    wandb: bool = False
    wandb_project: str = "autorlhf_nemo"
    # Before/after samples printed and saved.
    num_samples: int = 4


@dataclass
class ClusterConfig:
    """Where a job runs: the Slurm allocation (launch/slurm.sbatch, hydra/launcher=slurm)
    and the GPU memory the planner (``python -m autorlhf_nemo.plan``) budgets against."""

    nodes: int = 1
    # One process per GPU; the world size is nodes x gpus_per_node.
    gpus_per_node: int = 8
    # Memory of one GPU (H100 SXM: 80), and what the planner keeps free of model state
    # for the CUDA context, NCCL buffers and allocator fragmentation.
    gpu_memory_gib: float = 80.0
    reserved_memory_gib: float = 6.0
    # Slurm: None leaves the cluster's default.
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: str = "04:00:00"
    cpus_per_task: Optional[int] = None
    job_name: str = "autorlhf_nemo"
    log_dir: str = "${run_dir}/slurm"
    master_port: int = 29500
    # Run each node's torchrun inside this container (Slurm's pyxis plugin: srun --container-image).
    container_image: Optional[str] = None
    container_mounts: Optional[str] = None
    # Environment for every rank, e.g. NCCL_IB_HCA, NCCL_SOCKET_IFNAME (the NCCL hooks).
    env: dict[str, str] = field(default_factory=dict)
    # Shell lines run before srun (module loads, conda activate): the user's own commands, verbatim.
    setup: list[str] = field(default_factory=list)
    # Python interpreter on the nodes.
    python: str = "python"


@dataclass
class RootConfig:
    model: ModelConfig = MISSING
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # None: only the layout smoke job (parameter counts, LM loss); ppo: an RL run.
    algorithm: Optional[AlgorithmConfig] = None
    task: TaskConfig = field(default_factory=TaskConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # Where runs write logs and checkpoints.
    run_dir: str = "runs/${model.name}"


def slurm_minutes(time: str) -> int:
    """Slurm's time limit formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in whole minutes, rounded up."""
    days, _, clock = str(time).rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:                  # D-H[:M[:S]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:     # H:M:S
        hours, minutes, seconds = parts
    else:                     # M[:S]
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    return (int(days or 0) * 24 + hours) * 60 + minutes + (seconds > 0)


def register_configs() -> None:
    """Register the schemas so that YAML files in conf/ are validated against them,
    and the ``slurm_minutes`` resolver the launcher configs use."""
    OmegaConf.register_new_resolver("slurm_minutes", slurm_minutes, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RootConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="parallel", name="base_parallel", node=ParallelConfig)
    cs.store(group="algorithm", name="base_algorithm", node=AlgorithmConfig)
    cs.store(group="task", name="base_task", node=TaskConfig)
