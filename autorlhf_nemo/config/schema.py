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
    """What every online algorithm shares: the batch shape of a step, its optimizer steps,
    the reference model and the penalty for completions without EOS.

    A step draws ``prompts_per_step`` prompts (over all DP ranks) and samples each
    ``samples_per_prompt`` times; the samples of a prompt stay together on one DP rank and
    in one minibatch. ``epochs`` passes over the step's samples, ``minibatches`` optimizer
    steps each: with epochs=1, minibatch i (from 1) trains i - 1 updates after the policy
    that sampled it (the off-policy knob of Noukhovitch et al.: minibatches=1 is on-policy)."""

    name: str = MISSING
    prompts_per_step: int = 64
    samples_per_prompt: int = 1
    epochs: int = 1
    minibatches: int = 1
    # Reference model: top layers trained and copied for the reference; the frozen
    # trunk below is shared. -1: all layers trained, the reference is a full copy.
    num_layers_unfrozen: int = -1
    # With a frozen trunk (and PP=1): run it once per rollout and reuse its output for the
    # reference and every learning epoch (trlX's hydra forward); off: full forwards.
    cache_frozen_trunk: bool = True
    # Keep the full reference copy in CPU memory between uses (GPU runs).
    offload_reference: bool = False
    # A completion that ends without EOS: its score minus this (penalty_mode=subtract, TRL's
    # semantics) or replaced by -missing_eos_penalty (replace, the asynchronous-RLHF paper's
    # code with 1.0). None: no penalty.
    missing_eos_penalty: Optional[float] = None
    penalty_mode: str = "subtract"

    def uses_reference(self) -> bool:
        """Whether the algorithm reads a frozen reference model (built only then)."""
        return True

    def critic_seed(self) -> Optional[int]:
        """Seed of the value head's initial weights where the algorithm has a critic; None: no head."""
        return None


@dataclass
class PPOConfig(AlgorithmConfig):
    """PPO (trlX / NeMo-Aligner defaults where they agree): value head, GAE, clipped losses,
    a fixed or adaptive KL penalty in the per-token reward."""

    name: str = "ppo"
    epochs: int = 4
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
    value_head_seed: int = 1

    def critic_seed(self) -> Optional[int]:
        return self.value_head_seed


@dataclass
class OnlineDPOConfig(AlgorithmConfig):
    """Online DPO (Guo et al. 2024; the asynchronous-RLHF paper's most off-policy-robust
    algorithm): of each prompt's samples the highest-scored is chosen, the lowest rejected;
    a pair whose scores tie is dropped. No value head."""

    name: str = "online_dpo"
    samples_per_prompt: int = 2
    beta: float = 0.1
    # sigmoid: -log sigmoid(beta * margin) (DPO); ipo: (margin - 1 / (2 beta))^2 (IPO)
    loss_type: str = "sigmoid"


@dataclass
class RLOOConfig(AlgorithmConfig):
    """REINFORCE leave-one-out (Ahmadian et al. 2024, as in the asynchronous-RLHF paper's
    code): sequence reward minus a KL penalty, the mean of the prompt's other samples as
    baseline, a clipped ratio of sequence log-probs. No value head."""

    name: str = "rloo"
    samples_per_prompt: int = 4
    kl_coef: float = 0.05
    clip_ratio: float = 0.2
    # Whiten the advantages over the step's samples (all DP ranks).
    whiten_advantages: bool = False

    def uses_reference(self) -> bool:
        return self.kl_coef != 0


@dataclass
class GRPOConfig(AlgorithmConfig):
    """GRPO (Shao et al. 2024) with DAPO's clip-higher and token-level aggregation options:
    group-normalised advantages, a per-token clipped ratio, the k3 KL estimate to the
    reference in the loss. No value head."""

    name: str = "grpo"
    samples_per_prompt: int = 4
    beta: float = 0.04
    clip_low: float = 0.2
    clip_high: float = 0.2              # DAPO's clip-higher: e.g. 0.28
    epsilon: float = 1.0e-4             # in (r - mean) / (std + epsilon)
    scale_rewards: bool = True          # false: advantages r - mean, not divided by the std
    # token: sum over every token of the minibatch / its token count (DAPO);
    # sequence: each sample's mean over its tokens, then the mean over samples (GRPO).
    loss_aggregation: str = "token"

    def uses_reference(self) -> bool:
        return self.beta != 0


@dataclass
class ILQLConfig(AlgorithmConfig):
    """ILQL (Implicit Language Q-Learning, Snell et al. 2022; trlX's ILQLConfig defaults):
    offline RL from samples and their rewards. On the last pipeline stage a V head and Q heads
    (two with ``two_qs``), each h -> head_width -> (1 | vocabulary), plus target Q heads that
    follow the Q heads by Polyak averaging every ``steps_for_target_q_sync`` optimizer steps.
    Loss (algorithms/ilql/loss.py): L_Q + L_V (expectile tau) + cql_scale L_CQL + awac_scale L_AWAC.
    Decoding: log_softmax(logits) + beta (min_i Q_target_i - V), for every beta in ``betas``.

    Offline: each of train.total_steps optimizer steps trains on train.global_batch_size samples
    of the dataset (a new shuffle every pass). Nothing is sampled while training, so the online
    fields (prompts_per_step, samples_per_prompt, epochs, minibatches, missing_eos_penalty) do
    not apply; no reference model."""

    name: str = "ilql"
    tau: float = 0.7                    # expectile of V
    gamma: float = 0.99
    cql_scale: float = 0.1
    awac_scale: float = 1.0
    awac_beta: float = 0.0              # beta_train: AWAC weight exp(awac_beta (min Q_target - V)); 0: cloning
    alpha: float = 0.001                # Polyak: target <- alpha q + (1 - alpha) target
    steps_for_target_q_sync: int = 5    # in optimizer steps
    two_qs: bool = True
    # Width w of the heads' hidden layer; null: model.hidden_size (trlX used 2 x hidden).
    head_width: Optional[int] = None
    head_seed: int = 1
    # z-score the returns over the dataset
    reward_normalization: bool = True
    # Rows that cannot train (empty output, missing or NaN reward, longer than train.seq_length):
    # false raises an error naming the first of them; true drops them and reports the counts.
    drop_bad_rows: bool = False
    # Q-guided decoding strengths evaluated (eval/reward@beta=x); 0 decodes the policy alone.
    betas: list[float] = field(default_factory=lambda: [1.0, 4.0])
    # The beta summary.json's "after" reports as its headline; null: the best of ``betas``.
    report_beta: Optional[float] = None

    def uses_reference(self) -> bool:
        return False

    def width(self, hidden_size: int) -> int:
        return self.head_width or hidden_size


# algorithm=<name> -> its schema (conf/algorithm/<name>.yaml composes onto it)
ALGORITHMS: dict[str, type] = {"ppo": PPOConfig, "online_dpo": OnlineDPOConfig, "rloo": RLOOConfig,
                               "grpo": GRPOConfig, "ilql": ILQLConfig}


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
    # randomwalks: the seed of trlX's generate_random_walks. trlX's examples pass
    # config.train.seed = 1000 (its benchmark as it ran: the walks score 0.35 optimality);
    # 1002, the function's own default, gives an easier graph (0.79).
    graph_seed: int = 1000
    # Evaluation on the held-out prompts: greedy decoding, and one sampled pass per seed in
    # eval_seeds at eval_temperature (None: task.sampling.temperature). eval/reward is the
    # greedy figure when eval_greedy, else the mean of the sampled passes.
    eval_greedy: bool = False
    eval_temperature: Optional[float] = None
    eval_seeds: list[int] = field(default_factory=lambda: [0])
    # algorithm=ilql: a JSONL file of {"prompt", "output", "reward"} rows (data/offline.py), the
    # offline dataset of task=custom (and the cached dataset of task=sentiment).
    dataset: Optional[str] = None


@dataclass
class RolloutConfig:
    """Where samples are generated and how stale they may be (Noukhovitch et al., "Asynchronous RLHF").

    ``placement=colocated``: every rank generates and learns, one after the other.
    ``placement=split``: the last ``generator_ranks`` ranks of the world only generate, as
    replicas of ``generator_tensor_parallel_size`` ranks (no PP); the others only learn, at the
    ``parallel`` layout. After each policy update the learner sends its weights to every
    generator replica. ``max_staleness`` S: a sample used in update t was generated by policy
    version >= t - S (0: generators wait for fresh weights; 1: the paper's one-step overlap)."""

    # colocated | split
    placement: str = "colocated"
    generator_ranks: int = 0
    generator_tensor_parallel_size: int = 1
    # The generators' weight dtype (float32 | bfloat16 | float16); None: model.params_dtype.
    generator_dtype: Optional[str] = None
    max_staleness: int = 0
    # Old log-probs of the clipped ratio: proximal (the learner recomputes them with its weights
    # before its first update on a batch: decoupled PPO) | behaviour (the generator's own).
    old_logprobs: str = "proximal"
    # PPO/RLOO/GRPO with proximal old log-probs: weight each token by the truncated importance
    # ratio min(pi_proximal / pi_behaviour, importance_clip) of the samples' staleness.
    importance_correction: bool = True
    importance_clip: float = 2.0


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
    # None: only the layout smoke job (parameter counts, LM loss); an algorithm (ALGORITHMS,
    # e.g. algorithm=ppo): an RL run. The group's schema is that algorithm's dataclass.
    algorithm: Optional[AlgorithmConfig] = None
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
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
    for name, schema in ALGORITHMS.items():
        cs.store(group="algorithm", name=f"base_{name}", node=schema)
    cs.store(group="task", name="base_task", node=TaskConfig)


def typed_config(cfg) -> RootConfig:
    """The run's configuration as the schema's objects (RootConfig, the algorithm's own
    dataclass under ``algorithm``): converted once where a run or tool starts, then read
    as attributes everywhere. Takes a composed DictConfig, any other DictConfig or mapping
    (e.g. a saved .hydra/config.yaml) or a RootConfig."""
    from omegaconf import DictConfig
    from omegaconf.errors import MissingMandatoryValue

    from autorlhf_nemo.config.validate import ConfigError

    if isinstance(cfg, RootConfig):
        return cfg
    if not (isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is RootConfig):
        # not composed onto the schemas (a plain mapping, a loaded YAML file): put it onto them
        values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        base = OmegaConf.structured(RootConfig)
        algorithm = values.get("algorithm")
        if algorithm is not None:
            name = algorithm.get("name")
            if name not in ALGORITHMS:
                raise ConfigError([f"algorithm.name={name!r} is unknown: use one of {sorted(ALGORITHMS)}"])
            base.algorithm = OmegaConf.structured(ALGORITHMS[name])
        cfg = OmegaConf.merge(base, values)
    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as error:
        raise ConfigError([f"{error.full_key} has no value (???): set it, e.g. {error.full_key}=..."]) from None
