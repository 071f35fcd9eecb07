"""The model module every online algorithm shares (a ``nemo.core.ModelPT``): policy,
reference, optimizer, sampler, the learning loop and checkpoint state.

    policy      GPTModel (+ a tensor-parallel value head on the last stage where the
                algorithm has a critic), wrapped in Megatron DDP; the frozen trunk
                (num_layers_unfrozen) excluded
    reference   frozen, sharing the policy's frozen trunk (models/reference.py)
    optimizer   Megatron optimizer; OptimizerParamScheduler for the LR schedule
    generator   the policy's sampler (generation engine)
    learn       epochs x minibatches optimizer steps over the step's learner rows

An algorithm subclasses it with three pieces (the small interface the loop sees):

    make_experience(rollout) -> (learner batch, rollout stats)
    forward_step()           -> Megatron forward step whose loss is the algorithm's
    after_step(stats)        -> per-step bookkeeping (PPO's KL controller); optional

The loop around it (trainer.py) owns prompts, rewards, evaluation, logging and
checkpoints. Data, models, schedules and optimizer are megatron-core's; NeMo
contributes the module contract and ``.nemo``-style config handling.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from nemo.core import ModelPT
from omegaconf import DictConfig, OmegaConf

from autorlhf_nemo.algorithms.batch import make_sequence_batch
from autorlhf_nemo.algorithms.experience import Rollout, importance_weights, response_forward
from autorlhf_nemo.checkpoint.dist import per_layer_keys
from autorlhf_nemo.config.schema import RootConfig
from autorlhf_nemo.config.validate import learner_rows_per_prompt
from autorlhf_nemo.generation import GenerationOutput, Generator, matmul
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.models.policy import PolicyModel
from autorlhf_nemo.models.reference import FrozenTrunk, ReferenceModel, freeze_trunk
from autorlhf_nemo.ops.masked import masked_mean
from autorlhf_nemo.training.batching import data_parallel_microbatches
from autorlhf_nemo.training.engine import build_optimizer, train_step, wrap_for_training

# A learner-batch key: per-row weights [rows]; a row of weight 0 does not enter the loss, and a
# minibatch whose rows all weigh 0 (over every DP rank) is skipped (online DPO's tied pairs).
ROW_WEIGHT = "row_weight"


def nemo_config(cfg: RootConfig) -> DictConfig:
    """ModelPT forbids a top-level ``model`` key: the trunk's config goes under ``gpt``."""
    values = dataclasses.asdict(cfg)
    values["gpt"] = values.pop("model")
    return OmegaConf.create(values)


def minibatch_assignment(groups: int, minibatches: int, generator: torch.Generator) -> torch.Tensor:
    """[groups] minibatch index of each global prompt group for one epoch.

    Groups are taken in runs of ``minibatches`` consecutive ones; each run is dealt out in
    a random order, one group to every minibatch: a stratified random split, in which every
    contiguous equal share of the groups (a DP rank's) holds an equal part of every
    minibatch, so the minibatches do not depend on the DP size."""
    runs = torch.rand(groups // minibatches, minibatches, generator=generator)
    return runs.argsort(dim=1).flatten()


class OnlineModel(ModelPT):
    def __init__(self, cfg: RootConfig, runtime, init_weights):
        """``cfg``: the run's typed config; ``init_weights(gpt, cfg, runtime)`` loads the initial
        policy (HF checkpoint, pretraining, ...); the reference starts from the same weights."""
        super().__init__(cfg=nemo_config(cfg), trainer=None)
        self.run_cfg, self.runtime = cfg, runtime
        a, t = cfg.algorithm, cfg.train
        self.vocab_size, self.micro_batch_size = cfg.model.vocab_size, t.micro_batch_size
        # log-probs in ratios, KLs and margins are of the distribution that was sampled
        self.temperature = cfg.task.sampling.temperature

        gpt = build_model(cfg)
        init_weights(gpt, cfg, runtime)
        # built only where the algorithm reads it (GRPO with beta 0, RLOO with kl_coef 0 do not)
        self.reference = ReferenceModel(gpt, cfg, a.num_layers_unfrozen, offload=a.offload_reference) \
            if a.uses_reference() else None
        freeze_trunk(gpt, a.num_layers_unfrozen)
        self.policy = wrap_for_training(self.build_policy(gpt), cfg)
        self.optimizer = build_optimizer(self.policy, cfg)
        total = self.optimizer_steps
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0 if t.lr_warmup_steps else t.lr, max_lr=t.lr,
            min_lr=t.min_lr, lr_warmup_steps=t.lr_warmup_steps,
            lr_decay_steps=t.lr_decay_steps or total, lr_decay_style=t.lr_decay_style,
            start_wd=t.weight_decay, end_wd=t.weight_decay, wd_incr_steps=total,
            wd_incr_style="constant",
            # on resume the step count comes from the checkpoint and the schedule from this config
            # (a run resumed with more train.total_steps decays over the longer horizon)
            use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=True)
        self.seq_multiple = runtime.tp_size if cfg.parallel.sequence_parallel else 1
        self.trunk = FrozenTrunk(gpt, a.num_layers_unfrozen) \
            if self.caches_trunk() and FrozenTrunk.applies(gpt, a.num_layers_unfrozen) else None
        self.rows_per_prompt = learner_rows_per_prompt(a.name, a.samples_per_prompt)
        self._generator = None  # made by generator(); told when the weights change

    @property
    def optimizer_steps(self) -> int:
        a = self.run_cfg.algorithm
        return self.run_cfg.train.total_steps * a.epochs * a.minibatches

    @property
    def updates_per_step(self) -> int:
        return self.run_cfg.algorithm.epochs * self.run_cfg.algorithm.minibatches

    def build_policy(self, gpt):
        """The trained module around the trunk (before DDP wraps it): here with a value head
        where the algorithm has a critic."""
        return PolicyModel(gpt, value_head_seed=self.run_cfg.algorithm.critic_seed())

    def caches_trunk(self) -> bool:
        """Whether the frozen trunk's output is computed once per rollout and reused."""
        return self.run_cfg.algorithm.cache_frozen_trunk

    # ------------------------------------------------------------------ ModelPT contract
    def setup_training_data(self, train_data_config):
        """Prompts come from the task (tasks.py), drawn by the trainer loop."""

    def setup_validation_data(self, val_data_config):
        """Held-out prompts come from the task (tasks.py)."""

    @classmethod
    def list_available_models(cls):
        return None

    # ------------------------------------------------------------------ the algorithm's part
    def make_experience(self, rollout: Rollout) -> tuple[dict, dict]:
        """(learner batch: tensors with one row per learner row, ``rows_per_prompt`` consecutive
        rows per prompt; rollout stats: DP means, identical on every rank of the last stage)."""
        raise NotImplementedError

    def forward_step(self):
        """Megatron forward step of the algorithm's loss on a micro-batch of the learner batch."""
        raise NotImplementedError

    def after_step(self, stats: dict) -> None:
        """Per-step bookkeeping after learning (e.g. PPO's adaptive KL coefficient)."""

    def step_metrics(self) -> dict:
        """Extra metrics of the step (e.g. PPO's KL coefficient)."""
        return {}

    @staticmethod
    def sample_stats(scores: torch.Tensor, generation: GenerationOutput) -> dict:
        """Mean score and response length of the step's samples over the DP group."""
        dp = parallel_state.get_data_parallel_group()
        rows = torch.ones_like(scores)
        return {"score": masked_mean(scores, rows, dp).item(),
                "response_length": masked_mean(generation.response_mask.sum(-1).float(), rows, dp).item()}

    def off_policy(self, generation: GenerationOutput, proximal: torch.Tensor, per_sequence: bool = False):
        """(old log-probs [b, R], importance weights or None, stats) of a step's samples
        (rollout.*; on the last stage). Colocated: the policy sampled them, ``proximal`` (its
        log-probs, recomputed) are the old ones. Split: the generator's log-probs of the
        sampled distribution are the behaviour policy's; old_logprobs=behaviour takes them as
        the old ones (the paper's code), proximal keeps ``proximal`` and, with
        importance_correction, weighs the loss by min(pi_proximal / pi_behaviour, importance_clip)
        (per token, or per sequence: ``per_sequence``). Stats: the mean |proximal - behaviour|
        per token, and the weights' mean and clipped fraction."""
        r = self.run_cfg.rollout
        if r.placement != "split":
            return proximal, None, {}
        mask = generation.response_mask.float()
        behaviour = generation.processed_logprobs.float() * mask
        dp = parallel_state.get_data_parallel_group()
        stats = {"behaviour_logprob_gap": masked_mean((proximal - behaviour).abs(), mask, dp).item()}
        if r.old_logprobs == "behaviour":
            return behaviour, None, stats
        if not r.importance_correction:
            return proximal, None, stats
        weights, clipped = importance_weights(proximal, behaviour, mask, r.importance_clip, per_sequence)
        where = torch.ones_like(weights) if per_sequence else mask
        stats.update(importance_weight=masked_mean(weights, where, dp).item(),
                     importance_clipped=masked_mean(clipped, where, dp).item())
        return proximal, weights, stats

    # ------------------------------------------------------------------ sampling
    def generator(self, pad_token_id: int, tokenizer=None) -> Generator:
        """The policy's sampler. On CPU it decodes with packed weight copies where
        ``matmul.packing_available`` says so, remade after each optimizer step and checkpoint load."""
        gpt = self.policy.module.gpt
        self._generator = Generator(gpt, self.vocab_size, pad_token_id, tokenizer=tokenizer,
                                    pack_weights=matmul.packing_available(self.runtime.device,
                                                                          gpt.config.params_dtype))
        return self._generator

    def _weights_changed(self, weights=None) -> None:
        if self._generator is not None:
            self._generator.weights_changed(weights)

    # ------------------------------------------------------------------ experience helpers
    def sequence_batch(self, generation: GenerationOutput, **per_token) -> dict:
        """Training rows of ``generation`` (make_sequence_batch), with the frozen trunk's
        output computed once for them when it is cached."""
        g = generation
        batch = make_sequence_batch(g.prompt_ids, g.prompt_mask, g.response_ids, g.response_mask,
                                    self.seq_multiple, **per_token)
        if self.trunk is not None:
            batch["trunk_hidden"] = self.trunk.hidden(batch, self.micro_batch_size)
        return batch

    def _top(self, gpt):
        """Run only the layers above the cached trunk (when it is cached)."""
        return self.trunk.top(gpt) if self.trunk else contextlib.nullcontext()

    def policy_logprobs(self, batch: dict, with_values: bool = False):
        """(log-probs [b, R], values [b, R] or None) of the current policy on the last stage; None elsewhere."""
        with self._top(self.policy.module.gpt):
            return response_forward(self.policy, batch, self.vocab_size, self.micro_batch_size, self.temperature,
                                    with_values)

    def reference_logprobs(self, batch: dict):
        """Log-probs [b, R] of the reference on the last stage; None elsewhere (and where the
        algorithm has no reference: ``uses_reference``)."""
        if self.reference is None:
            return None
        with self.reference.on_device() as reference, self._top(reference):
            out = response_forward(reference, batch, self.vocab_size, self.micro_batch_size, self.temperature)
        return None if out is None else out[0]

    # ------------------------------------------------------------------ learning
    def learn(self, batch: dict, generator: torch.Generator) -> tuple[dict, list[dict]]:
        """``epochs`` passes over the step's learner rows, ``minibatches`` optimizer steps each.
        Returns (the last update's metrics plus lr, grad_norm and the step's staleness figures;
        one row per update: epoch, minibatch, staleness, metrics).

        Minibatches are global: which prompts form minibatch k of an epoch is drawn from
        ``generator`` (the same draw on every rank) over the global prompt indices, so every
        optimizer step sees the same samples at every DP size (``minibatch_assignment``), and
        the rows of a prompt stay together. Each rank trains on its own rows of each minibatch;
        nothing moves between ranks. An update's staleness is the number of updates applied
        since the policy that sampled its rows (0 = on-policy)."""
        a = self.run_cfg.algorithm
        rows_total, seq = batch["tokens"].shape
        local_prompts = rows_total // self.rows_per_prompt
        first = parallel_state.get_data_parallel_rank() * local_prompts
        step_fn = self.forward_step()
        updates, applied, skipped, metrics = [], 0, 0, {}
        for epoch in range(a.epochs):
            assignment = minibatch_assignment(a.prompts_per_step, a.minibatches, generator)
            local = assignment[first:first + local_prompts].repeat_interleave(self.rows_per_prompt)
            local = local.to(batch["tokens"].device)
            for k in range(a.minibatches):
                rows = torch.nonzero(local == k).flatten()
                minibatch = {key: value[rows] for key, value in batch.items()}
                if not self._has_signal(minibatch):
                    skipped += 1
                    continue
                micro = data_parallel_microbatches(minibatch, 0, 1, self.micro_batch_size)
                lr = self.scheduler.get_lr(self.optimizer.param_groups[0])
                with self._top(self.policy.module.gpt):
                    result = train_step(self.policy, self.optimizer, micro, len(micro), step_fn, seq,
                                        self.micro_batch_size, scheduler=self.scheduler)
                metrics = {**result.metrics, "lr": lr, "grad_norm": float(result.grad_norm or 0.0)}
                updates.append({"epoch": epoch, "minibatch": k, "staleness": applied, **metrics})
                applied += int(result.update_successful)
        self._weights_changed([p for p in self.policy.module.gpt.parameters() if p.requires_grad])
        staleness = [u["staleness"] for u in updates] or [0]
        metrics.update(updates=applied, skipped_updates=skipped, staleness_mean=sum(staleness) / len(staleness),
                       staleness_max=max(staleness))
        return metrics, updates

    @staticmethod
    def _has_signal(minibatch: dict) -> bool:
        """Whether any row of the minibatch, on any DP rank, enters the loss."""
        if ROW_WEIGHT not in minibatch:
            return True
        total = minibatch[ROW_WEIGHT].sum().reshape(1).float()
        dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
        return bool(total.item() > 0)

    # ------------------------------------------------------------------ checkpoint state
    def sharded_state_dict(self, prefix: str = "", is_loading: bool = False, **kwargs) -> dict:
        """Model (trunk + value head) and optimizer shards for Megatron dist checkpointing."""
        model_state = self.policy.module.sharded_state_dict(prefix="policy.")
        optimizer_state = self.optimizer.sharded_state_dict(model_state, is_loading=is_loading)
        return {"model": model_state, "optimizer": per_layer_keys(optimizer_state)}

    def load_sharded_state_dict(self, state: dict) -> None:
        weights = {k[len("policy."):]: v for k, v in state["model"].items()}
        missing, unexpected = self.policy.module.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not match the policy: missing={missing}, unexpected={unexpected}")
        self.optimizer.load_state_dict(state["optimizer"])
        self._weights_changed()

    def algorithm_state(self) -> dict:
        """Replicated state: identical on every rank."""
        return {"scheduler": self.scheduler.state_dict()}

    def load_algorithm_state(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
