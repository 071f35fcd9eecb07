"""Typed configuration schemas, registered with Hydra's ConfigStore.

Every default lives here, once.  The YAML files under ``conf/`` only override
these fields; a key that is not declared here is rejected when the config is
composed (OmegaConf struct mode) and again by :func:`validate.validate_config`.
Each field is described by the docstring under it (attribute docstrings, Megatron-core's
convention); ``python -m autorlhf_nemo.docs`` reads them into docs/reference/config.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from autorlhf_nemo.config.errors import ConfigError


@dataclass
class ModelConfig:
    """A Llama-family decoder (RMSNorm, SwiGLU, RoPE, grouped-query attention)."""

    name: str = MISSING
    """The model's name: run_dir's default and the planner's label (conf/model/<name>.yaml sets it)."""
    num_layers: int = MISSING
    """Transformer layers."""
    hidden_size: int = MISSING
    """Width h of the residual stream."""
    ffn_hidden_size: int = MISSING
    """Inner width of the SwiGLU MLP."""
    num_attention_heads: int = MISSING
    """Query heads."""
    num_query_groups: int = MISSING
    """Key/value heads (grouped-query attention); equal to num_attention_heads for MHA."""
    vocab_size: int = MISSING
    """The tokenizer's vocabulary size (before padding)."""
    kv_channels: Optional[int] = None
    """Per-head dimension; null: hidden_size // num_attention_heads."""
    max_position_embeddings: int = 2048
    """Longest sequence (prompt + completion) the model is configured for."""
    rotary_base: float = 10000.0
    """RoPE base frequency theta."""
    rope_scaling_factor: Optional[float] = None
    """Llama-3.1 style RoPE frequency scaling factor; null disables it."""
    norm_epsilon: float = 1e-5
    """Epsilon of the RMSNorm layers."""
    tie_word_embeddings: bool = False
    """Share the input embedding with the output layer."""
    add_qkv_bias: bool = False
    """Biases on the query/key/value projections only (Qwen2); no other linear layer has one."""
    make_vocab_size_divisible_by: int = 128
    """The embedding table is padded to a multiple of this times the TP size."""
    params_dtype: str = "float32"
    """Dtype of the weights and activations."""
    init_method_std: float = 0.02
    """Std of the normal initialisation of random weights (and of the heads added for RL)."""
    hf_checkpoint: Optional[str] = None
    """Hugging Face checkpoint directory (safetensors + config.json), the name of a packaged model
    ("smollm2-135m-instruct"), or null for random initialization."""


@dataclass
class ParallelConfig:
    """Megatron parallel layout. world = TP x PP x CP x DP."""

    tensor_model_parallel_size: int = 1
    """TP: ranks that split each layer's weight matrices."""
    pipeline_model_parallel_size: int = 1
    """PP: stages that the layers are divided between."""
    context_parallel_size: int = 1
    """Context parallelism is not implemented yet: validation accepts only 1 (the planner counts with it)."""
    sequence_parallel: bool = False
    """Split activations along the sequence in the non-TP regions; needs TP > 1."""
    use_distributed_optimizer: bool = False
    """Shard optimizer states across data-parallel ranks (ZeRO-1)."""
    world_size: Optional[int] = None
    """Expected number of processes; null: taken from the launcher (WORLD_SIZE)."""
    backend: str = "auto"
    """torch.distributed backend; auto: nccl with CUDA, gloo without."""
    timeout_minutes: int = 30
    """Timeout of collective operations, minutes."""


@dataclass
class TrainConfig:
    """Batch geometry and optimizer of a training step."""

    seed: int = 1234
    """Seed of the run's random number generators."""
    micro_batch_size: int = 1
    """Sequences per forward/backward pass on one data-parallel rank."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all data-parallel ranks: ILQL's batch (the online algorithms'
    come from algorithm.prompts_per_step); the planner budgets with it."""
    seq_length: int = 128
    """Longest training sequence: what the planner budgets activations for; ILQL rows longer than it are
    an error (or dropped with algorithm.drop_bad_rows). Online batches are as long as their longest row."""
    optimizer: str = "adam"
    """Optimizer (Megatron's; adam is AdamW with weight_decay)."""
    lr: float = 1.0e-5
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate at the end of the decay."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    adam_beta1: float = 0.9
    """Adam's first-moment decay."""
    adam_beta2: float = 0.95
    """Adam's second-moment decay."""
    adam_eps: float = 1.0e-8
    """Adam's epsilon."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    lr_warmup_steps: int = 0
    """Optimizer steps of linear learning-rate warm-up from 0."""
    lr_decay_style: str = "constant"
    """Learning-rate decay after the warm-up, to min_lr by lr_decay_steps."""
    lr_decay_steps: Optional[int] = None
    """Optimizer step where the decay reaches min_lr; null: the run's last step."""
    total_steps: int = 100
    """RL iterations (generate, score, learn) of an online algorithm run; optimizer steps of ILQL."""
    eval_every: int = 0
    """Evaluate on the task's held-out prompts every N steps; 0: only first and last."""
    recompute: Optional[str] = None
    """Activation recomputation in training forwards: null keeps all activations, selective recomputes
    core attention, full keeps only each layer's input and recomputes the layer."""


@dataclass
class SamplingConfig:
    """Rollout sampling (see generation.SamplingParams)."""

    max_new_tokens: int = 32
    """Most tokens generated per completion."""
    min_new_tokens: int = 0
    """EOS is masked out until this many tokens were generated."""
    temperature: float = 1.0
    """Softmax temperature; 0: greedy."""
    top_k: int = 0
    """Sample from the k most likely tokens only; 0: off."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of tokens with this much probability; 1: off."""


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
    """The algorithm (algorithm=<name> selects its schema and defaults)."""
    prompts_per_step: int = 64
    """Prompts drawn per step, over all data-parallel ranks."""
    samples_per_prompt: int = 1
    """Completions sampled per prompt."""
    epochs: int = 1
    """Passes over a step's samples."""
    minibatches: int = 1
    """Optimizer steps per pass (each on an equal share of the step's prompts)."""
    num_layers_unfrozen: int = -1
    """-1, or 1..model.num_layers: the top layers are trained and copied for the reference, the frozen trunk
    below is shared; -1: all layers trained, the reference is a full copy."""
    cache_frozen_trunk: bool = True
    """With a frozen trunk (and PP=1): run it once per rollout and reuse its output for the reference
    and every learning epoch (trlX's hydra forward); false: full forwards."""
    offload_reference: bool = False
    """Keep the full reference copy in CPU memory between uses (GPU runs)."""
    missing_eos_penalty: Optional[float] = None
    """A completion that ends without EOS is penalised by this (see penalty_mode); null: no penalty."""
    penalty_mode: str = "subtract"
    """subtract: the score minus missing_eos_penalty (TRL's semantics); replace: the score becomes
    -missing_eos_penalty (the asynchronous-RLHF paper's code, with 1.0)."""

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
    """Coefficient of the per-token KL penalty (the adaptive controller's start)."""
    target_kl: Optional[float] = None
    """The adaptive KL controller's target KL; null: a fixed coefficient."""
    kl_horizon: int = 10000
    """The adaptive KL controller's horizon, in samples."""
    gamma: float = 1.0
    """Discount of the per-token rewards."""
    lam: float = 0.95
    """GAE's lambda."""
    clip_ratio: float = 0.2
    """Policy loss: the ratio is clipped to [1 - clip_ratio, 1 + clip_ratio]."""
    clip_value: float = 0.2
    """Value loss: new values are clipped to within clip_value of the old ones."""
    vf_coef: float = 1.0
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    clip_reward: Optional[float] = 10.0
    """Scores are clipped to [-clip_reward, clip_reward]; null: no clipping."""
    scale_reward: Optional[str] = None
    """running: scores divided by the running std of all scores seen so far; null: unscaled."""
    whiten_advantages: bool = True
    """Whiten the advantages over the step's samples."""
    value_head_seed: int = 1
    """Seed of the value head's initial weights."""

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
    """Strength of the implicit KL constraint to the reference."""
    loss_type: str = "sigmoid"
    """sigmoid: -log sigmoid(beta * margin) (DPO); ipo: (margin - 1 / (2 beta))^2 (IPO)."""


@dataclass
class RLOOConfig(AlgorithmConfig):
    """REINFORCE leave-one-out (Ahmadian et al. 2024, as in the asynchronous-RLHF paper's
    code): sequence reward minus a KL penalty, the mean of the prompt's other samples as
    baseline, a clipped ratio of sequence log-probs. No value head."""

    name: str = "rloo"
    samples_per_prompt: int = 4
    kl_coef: float = 0.05
    """Coefficient of the sequence KL penalty in the reward; 0: no reference model."""
    clip_ratio: float = 0.2
    """The sequence ratio is clipped to [1 - clip_ratio, 1 + clip_ratio]."""
    whiten_advantages: bool = False
    """Whiten the advantages over the step's samples (all DP ranks)."""

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
    """Weight of the k3 KL estimate in the loss; 0: no reference model."""
    clip_low: float = 0.2
    """The ratio's lower clip: 1 - clip_low."""
    clip_high: float = 0.2
    """The ratio's upper clip: 1 + clip_high (DAPO's clip-higher: e.g. 0.28)."""
    epsilon: float = 1.0e-4
    """epsilon of the advantage (r - mean) / (std + epsilon)."""
    scale_rewards: bool = True
    """Divide the advantages by the group's std; false: r - mean."""
    loss_aggregation: str = "token"
    """token: sum over every token of the minibatch / its token count (DAPO); sequence: each sample's
    mean over its tokens, then the mean over samples (GRPO)."""

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
    tau: float = 0.7
    """Expectile of V."""
    gamma: float = 0.99
    """Discount."""
    cql_scale: float = 0.1
    """Weight of the conservative (CQL) loss."""
    awac_scale: float = 1.0
    """Weight of the AWAC (advantage-weighted cloning) loss."""
    awac_beta: float = 0.0
    """beta_train: the AWAC weight exp(awac_beta (min Q_target - V)); 0: plain cloning."""
    alpha: float = 0.001
    """Polyak averaging: target <- alpha q + (1 - alpha) target."""
    steps_for_target_q_sync: int = 5
    """Optimizer steps between target Q updates."""
    two_qs: bool = True
    """Two Q heads (the min of the two is used)."""
    head_width: Optional[int] = None
    """Width w of the heads' hidden layer; null: model.hidden_size (trlX used 2 x hidden)."""
    head_seed: int = 1
    """Seed of the heads' initial weights."""
    reward_normalization: bool = True
    """z-score the returns over the dataset."""
    drop_bad_rows: bool = False
    """Rows that cannot train (empty output, missing or NaN reward, longer than train.seq_length): false
    raises an error naming the first of them; true drops them and reports the counts."""
    betas: list[float] = field(default_factory=lambda: [1.0, 4.0])
    """Q-guided decoding strengths evaluated (eval/reward@beta=x); 0 decodes the policy alone."""
    report_beta: Optional[float] = None
    """The beta summary.json's "after" reports as its headline; null: the best of betas."""

    def uses_reference(self) -> bool:
        return False

    def width(self, hidden_size: int) -> int:
        return self.head_width or hidden_size


@dataclass
class SupervisedConfig(AlgorithmConfig):
    """What the supervised algorithms on the offline loop share (SFT, offline DPO): a dataset
    (the ``data`` group), train.total_steps optimizer steps of train.global_batch_size rows each
    drawn from a seeded shuffle of the training split (a new shuffle every pass), evaluation of the
    held-out split. Nothing is sampled while training, so the online fields (prompts_per_step,
    samples_per_prompt, epochs, minibatches, missing_eos_penalty) do not apply."""

    num_epochs: Optional[float] = None
    """Passes over the training split: the run takes ceil(num_epochs x rows / train.global_batch_size)
    optimizer steps instead of train.total_steps; null: train.total_steps."""
    eval_generation: bool = True
    """Also decode the task's held-out prompts at each evaluation and score them (task=sentiment: VADER);
    a task without a reward function (task=custom) only decodes a few samples to show."""


@dataclass
class SFTConfig(SupervisedConfig):
    """Supervised fine-tuning: the negative log-likelihood of the response tokens (a completion, every
    assistant turn of a conversation, every token of a text), summed and divided by the number of
    such tokens in the whole global batch, so micro-batch count and DP size do not change an update.
    No reference model."""

    name: str = "sft"

    def uses_reference(self) -> bool:
        return False


@dataclass
class DPOConfig(SupervisedConfig):
    """Offline DPO (Rafailov et al. 2023) on (prompt, chosen, rejected) rows; the loss code is online
    DPO's (algorithms/online_dpo/loss.py). train.global_batch_size counts pairs;
    train.micro_batch_size counts sequences (even: a chosen and its rejected stay together).

        margin = (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))
        sigmoid: -(1 - eps) log sigmoid(beta margin) - eps log sigmoid(-beta margin)
        ipo:     (margin - 1 / (2 beta))^2
        + sft_weight x the chosen response's mean negative log-likelihood per token"""

    name: str = "dpo"
    beta: float = 0.1
    """Strength of the implicit KL constraint to the reference."""
    loss_type: str = "sigmoid"
    """sigmoid: DPO's -log sigmoid(beta margin) (with label_smoothing: cDPO); ipo: (margin - 1/(2 beta))^2."""
    label_smoothing: float = 0.0
    """eps of conservative DPO (cDPO): the probability that a pair's label is flipped; sigmoid only."""
    sft_weight: float = 0.0
    """Weight of the NLL of the chosen response (mean per token) added to each pair's loss (RPO)."""
    average_logprobs: Optional[bool] = None
    """Log-probs of a response averaged over its tokens instead of summed; null: TRL's choice per
    loss type (averaged for ipo, summed for sigmoid)."""
    reference: str = "precompute"
    """precompute: the initial policy's log-probs of every row, computed in one no-grad pass before
    training and saved in run_dir (no reference model is resident while training); online: a frozen
    reference model computes them per batch (sharing the frozen trunk; offload_reference moves it to
    host memory between uses)."""

    def uses_reference(self) -> bool:
        return self.reference == "online"

    def averages(self) -> bool:
        """Whether sequence log-probs are per-token means (average_logprobs, else TRL's per loss type)."""
        return self.loss_type == "ipo" if self.average_logprobs is None else self.average_logprobs


# algorithm=<name> -> its schema (conf/algorithm/<name>.yaml composes onto it)
ALGORITHMS: dict[str, type] = {"ppo": PPOConfig, "online_dpo": OnlineDPOConfig, "rloo": RLOOConfig,
                               "grpo": GRPOConfig, "ilql": ILQLConfig, "sft": SFTConfig, "dpo": DPOConfig}
# algorithms that train on a dataset (algorithms/offline.py) rather than on their own samples
OFFLINE_ALGORITHMS = ("ilql", "sft", "dpo")
# the offline algorithms whose data come from the data group (data/loader.py)
SUPERVISED_ALGORITHMS = ("sft", "dpo")


@dataclass
class TaskConfig:
    """Prompts, reward and sampling of an RL task (see autorlhf_nemo.tasks)."""

    name: str = "custom"
    """The task; custom: prompts and reward_fn given to autorlhf_nemo.train."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Rollout sampling."""
    num_eval_prompts: int = 64
    """Held-out prompts scored at each evaluation."""
    chat_template: bool = False
    """Wrap prompts in the tokenizer's chat template (instruct models)."""
    pretrain_steps: int = 0
    """randomwalks: steps of next-token pretraining on the walks before RL."""
    pretrain_lr: float = 3.0e-3
    """randomwalks: the pretraining's learning rate."""
    pretrain_batch_size: int = 96
    """randomwalks: walks per pretraining step over all data-parallel ranks (each rank's share is cut
    into train.micro_batch_size micro-batches where that divides it, else taken as one)."""
    graph_seed: int = 1000
    """randomwalks: the seed of trlX's generate_random_walks; 1000 is trlX's benchmark as it ran (the
    walks score 0.35 optimality), 1002, the function's own default, an easier graph (0.79)."""
    eval_greedy: bool = False
    """Evaluate with greedy decoding; eval/reward is then the greedy figure."""
    eval_temperature: Optional[float] = None
    """Temperature of the sampled evaluation passes; null: task.sampling.temperature."""
    eval_seeds: list[int] = field(default_factory=lambda: [0])
    """One sampled evaluation pass per seed; without eval_greedy, eval/reward is their mean."""
    dataset: Optional[str] = None
    """algorithm=ilql: a dataset of {"prompt", "output", "reward"} rows (a JSONL/JSON/parquet/CSV file, a
    datasets directory or hub name: data/loader.py), the offline dataset of task=custom (and the cached
    dataset of task=sentiment)."""


@dataclass
class DataConfig:
    """A dataset, through Hugging Face ``datasets`` (data/loader.py): SFT's and DPO's training data,
    or an online algorithm's prompts. Its columns decide its type (TRL's names): prompt + completion,
    messages, text (SFT); prompt + chosen + rejected, or chosen + rejected with the prompt as their
    common start (DPO); prompt (PPO, online DPO, RLOO, GRPO: replaces the task's prompts, the task
    keeping its reward)."""

    path: Optional[str] = None
    """A local .jsonl/.json/.parquet/.csv file or datasets directory (relative: from the working
    directory, else the repository root), or a hub dataset name where a hub is reachable."""
    split: str = "train"
    """The split trained on (of a hub dataset or a directory; a single file is one split)."""
    eval_split: Optional[str] = None
    """A split held out for evaluation; null: eval_fraction of the training rows."""
    eval_fraction: float = 0.05
    """Without eval_split: this fraction of the rows (seeded by train.seed) is held out; 0: none."""
    limit: Optional[int] = None
    """Use only the first N rows (before holding out); null: all."""
    max_length: Optional[int] = None
    """Longest sequence in tokens (prompt + response), at most train.seq_length; a longer prompt loses its
    earliest tokens or turns, a response that does not fit drops its row (both counted); null: train.seq_length."""
    columns: dict[str, str] = field(default_factory=dict)
    """Renames, ours: theirs (e.g. data.columns.prompt=question) for a dataset with other column names."""
    pack: bool = False
    """SFT: pack several samples into each row of max_length tokens, attention kept inside each sample."""


@dataclass
class RolloutConfig:
    """Where samples are generated and how stale they may be (Noukhovitch et al., "Asynchronous RLHF").

    ``placement=colocated``: every rank generates and learns, one after the other.
    ``placement=split``: the last ``generator_ranks`` ranks of the world only generate, as
    replicas of ``generator_tensor_parallel_size`` ranks (no PP); the others only learn, at the
    ``parallel`` layout. After each policy update the learner sends its weights to every
    generator replica. ``max_staleness`` S: a sample used in update t was generated by policy
    version >= t - S (0: generators wait for fresh weights; 1: the paper's one-step overlap)."""

    placement: str = "colocated"
    """colocated: every rank generates and learns; split: generator ranks apart from learner ranks."""
    generator_ranks: int = 0
    """placement=split: the last ranks of the world, which only generate."""
    generator_tensor_parallel_size: int = 1
    """placement=split: TP size of each generator replica."""
    generator_dtype: Optional[str] = None
    """The generators' weight dtype; null: model.params_dtype."""
    max_staleness: int = 0
    """S: a sample used in update t was generated by policy version >= t - S."""
    old_logprobs: str = "proximal"
    """Old log-probs of the clipped ratio: proximal (the learner recomputes them with its weights before
    its first update on a batch: decoupled PPO) or behaviour (the generator's own)."""
    importance_correction: bool = True
    """PPO/RLOO/GRPO with proximal old log-probs: weight each token by the truncated importance ratio
    min(pi_proximal / pi_behaviour, importance_clip)."""
    importance_clip: float = 2.0
    """The truncation c of the importance ratio min(ratio, c)."""


@dataclass
class CheckpointConfig:
    """Checkpoints of a run (<run_dir>/checkpoints) and its Hugging Face export."""

    save_every: int = 0
    """Save every N steps; 0: only at the end."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted once a newer one is complete."""
    resume: bool = True
    """Continue from the newest complete checkpoint in run_dir when there is one."""
    export_hf: bool = True
    """Export the final policy as a Hugging Face safetensors checkpoint (<run_dir>/hf_export)."""


@dataclass
class LoggingConfig:
    """Where a run's metrics go (metrics.jsonl is always written)."""

    progress_bar: bool = True
    """Show a progress bar on rank 0."""
    tensorboard: bool = True
    """Write TensorBoard events under run_dir."""
    wandb: bool = False
    """Log to Weights & Biases (needs `pip install wandb`; offline mode works without network)."""
    wandb_project: str = "autorlhf_nemo"
    """The Weights & Biases project."""
    num_samples: int = 4
    """Before/after samples printed and saved."""


@dataclass
class ClusterConfig:
    """Where a job runs: the Slurm allocation (launch/slurm.sbatch, hydra/launcher=slurm)
    and the GPU memory the planner (``python -m autorlhf_nemo.plan``) budgets against."""

    nodes: int = 1
    """Nodes of the allocation."""
    gpus_per_node: int = 8
    """GPUs per node, one process each; the world size is nodes x gpus_per_node."""
    gpu_memory_gib: float = 80.0
    """Memory of one GPU, GiB (H100 SXM: 80)."""
    reserved_memory_gib: float = 6.0
    """GiB per GPU the planner keeps free of model state (CUDA context, NCCL buffers, fragmentation)."""
    partition: Optional[str] = None
    """Slurm partition; null: the cluster's default."""
    account: Optional[str] = None
    """Slurm account; null: the cluster's default."""
    qos: Optional[str] = None
    """Slurm QOS; null: the cluster's default."""
    time: str = "04:00:00"
    """Slurm time limit (M, M:S, H:M:S, D-H, D-H:M or D-H:M:S)."""
    cpus_per_task: Optional[int] = None
    """CPUs per task; null: the cluster's default."""
    job_name: str = "autorlhf_nemo"
    """Slurm job name."""
    log_dir: str = "${run_dir}/slurm"
    """Directory of the sbatch script and the job's logs."""
    master_port: int = 29500
    """torchrun's rendezvous port on the first node."""
    container_image: Optional[str] = None
    """Run each node's torchrun inside this container (Slurm's pyxis plugin: srun --container-image)."""
    container_mounts: Optional[str] = None
    """pyxis --container-mounts (src:dst[,src:dst...])."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment for every rank, e.g. NCCL_IB_HCA, NCCL_SOCKET_IFNAME (the NCCL hooks)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before srun (module loads, conda activate): the user's own commands, verbatim."""
    python: str = "python"
    """Python interpreter on the nodes."""

    def world_size(self) -> int:
        """Processes of the allocation, one per GPU: nodes x gpus_per_node."""
        return self.nodes * self.gpus_per_node


@dataclass
class RootConfig:
    """The whole configuration: one group per section."""

    model: ModelConfig = MISSING
    """The model (model=<name>: conf/model)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """The parallel layout (parallel=<name>: conf/parallel)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Batch geometry, optimizer and schedule."""
    algorithm: Optional[AlgorithmConfig] = None
    """null: only the layout smoke job (builds the model at the layout and prints parameter counts per
    rank); an algorithm (algorithm=<name>): an RL run, whose schema is that algorithm's dataclass."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The RL task (task=<name>: conf/task)."""
    data: DataConfig = field(default_factory=DataConfig)
    """A dataset (SFT, DPO)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Where samples are generated (asynchronous RLHF)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints and export."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics and samples."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Slurm allocation and the planner's GPU memory."""
    run_dir: str = "runs/${model.name}"
    """Where runs write logs and checkpoints."""


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
