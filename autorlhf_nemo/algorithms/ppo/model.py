"""PPO as a NeMo model module (``nemo.core.ModelPT``) on Megatron-core.

Config in (the composed root config), then:
    policy      GPTModel + tensor-parallel value head on the last stage (PolicyValueModel),
                wrapped in Megatron DDP; the frozen trunk (num_layers_unfrozen) excluded
    reference   frozen, sharing the policy's frozen trunk (models/reference.py)
    optimizer   Megatron optimizer; OptimizerParamScheduler for the LR schedule
    generate(prompts)           -> GenerationOutput (generation engine, per-row seeds)
    make_experience(gen, scores)-> (Experience, rollout stats)
    training_step(experience)   -> learn metrics: ppo_epochs x minibatches optimizer steps
    sharded_state_dict / state  -> what checkpoints hold (checkpoint/run_checkpoint.py)

The loop around it (trainer.py) owns prompts, rewards, evaluation, logging
and checkpoints. Data, models, schedules and optimizer are megatron-core's;
NeMo contributes the module contract and ``.nemo``-style config handling.
"""

from __future__ import annotations

import contextlib

import torch
from megatron.core import parallel_state
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from nemo.core import ModelPT
from omegaconf import DictConfig, OmegaConf

from autorlhf_nemo.algorithms.ppo.kl import make_kl_controller
from autorlhf_nemo.algorithms.ppo.rollout import make_experience
from autorlhf_nemo.algorithms.ppo.shaping import RunningMoments
from autorlhf_nemo.algorithms.ppo.step import ppo_forward_step
from autorlhf_nemo.checkpoint.dist import per_layer_keys
from autorlhf_nemo.config.validate import to_container
from autorlhf_nemo.generation import Generator, matmul
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.models.policy import PolicyValueModel
from autorlhf_nemo.models.reference import FrozenTrunk, ReferenceModel, freeze_trunk
from autorlhf_nemo.training.batching import data_parallel_microbatches
from autorlhf_nemo.training.engine import build_optimizer, train_step, wrap_for_training


def nemo_config(cfg) -> DictConfig:
    """ModelPT forbids a top-level ``model`` key: the trunk's config goes under ``gpt``."""
    values = to_container(cfg)
    values["gpt"] = values.pop("model")
    return OmegaConf.create(values)


def minibatch_assignment(rows: int, minibatches: int, generator: torch.Generator) -> torch.Tensor:
    """[rows] minibatch index of each global row for one epoch.

    Rows are taken in runs of ``minibatches`` consecutive rows; each run is dealt out in
    a random order, one row to every minibatch: a stratified random split, in which every
    contiguous equal share of the rows (a DP rank's) holds an equal part of every
    minibatch, so the minibatches do not depend on the DP size."""
    runs = torch.rand(rows // minibatches, minibatches, generator=generator)
    return runs.argsort(dim=1).flatten()


def optimizer_steps(values: dict) -> int:
    a = values["algorithm"]
    return values["train"]["total_steps"] * a["ppo_epochs"] * a["minibatches"]


class PPOModel(ModelPT):
    def __init__(self, cfg, runtime, init_weights):
        """``cfg``: the root config; ``init_weights(gpt, cfg, runtime)`` loads the initial policy
        (HF checkpoint, pretraining, ...); the reference starts from the same weights."""
        super().__init__(cfg=nemo_config(cfg), trainer=None)
        self.root_cfg, self.runtime = cfg, runtime
        values = to_container(cfg)
        self.values, a, t = values, values["algorithm"], values["train"]
        self.vocab_size, self.micro_batch_size = values["model"]["vocab_size"], t["micro_batch_size"]

        gpt = build_model(cfg)
        init_weights(gpt, cfg, runtime)
        self.reference = ReferenceModel(gpt, cfg, a["num_layers_unfrozen"], offload=a["offload_reference"])
        freeze_trunk(gpt, a["num_layers_unfrozen"])
        self.policy = wrap_for_training(PolicyValueModel(gpt, value_head_seed=a["value_head_seed"]), cfg)
        self.optimizer = build_optimizer(self.policy, cfg)
        total = optimizer_steps(values)
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0 if t["lr_warmup_steps"] else t["lr"], max_lr=t["lr"],
            min_lr=t["min_lr"], lr_warmup_steps=t["lr_warmup_steps"],
            lr_decay_steps=t["lr_decay_steps"] or total, lr_decay_style=t["lr_decay_style"],
            start_wd=t["weight_decay"], end_wd=t["weight_decay"], wd_incr_steps=total,
            wd_incr_style="constant")
        self.kl_controller = make_kl_controller(a["init_kl_coef"], a["target_kl"], a["kl_horizon"])
        self.score_moments = RunningMoments()
        self.seq_multiple = runtime.tp_size if values["parallel"]["sequence_parallel"] else 1
        self.trunk = FrozenTrunk(gpt, a["num_layers_unfrozen"]) \
            if a["cache_frozen_trunk"] and FrozenTrunk.applies(gpt, a["num_layers_unfrozen"]) else None
        self._generator = None  # made by generator(); told when the weights change

    # ------------------------------------------------------------------ ModelPT contract
    def setup_training_data(self, train_data_config):
        """Prompts come from the task (tasks.py), drawn by the trainer loop."""

    def setup_validation_data(self, val_data_config):
        """Held-out prompts come from the task (tasks.py)."""

    @classmethod
    def list_available_models(cls):
        return None

    # ------------------------------------------------------------------ the algorithm
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

    def make_experience(self, generation, scores: torch.Tensor):
        """Experience (log-probs, values, reference log-probs, rewards, GAE) and rollout stats."""
        a = self.values["algorithm"]
        scores = scores.float()
        if a["scale_reward"] == "running":
            self.score_moments.update(scores, parallel_state.get_data_parallel_group())
            scores = scores / self.score_moments.std
        with self.reference.on_device() as reference:
            return make_experience(
                generation, scores, self.policy, reference, vocab_size=self.vocab_size,
                kl_coef=self.kl_controller.value, gamma=a["gamma"], lam=a["lam"],
                micro_batch_size=self.micro_batch_size, clip_reward=a["clip_reward"],
                whiten_advantages=a["whiten_advantages"], pad_to_multiple_of=self.seq_multiple, trunk=self.trunk)

    def training_step(self, experience, generator: torch.Generator) -> dict:
        """ppo_epochs passes over the step's experience, ``minibatches`` optimizer steps each;
        returns the last step's metrics plus lr and grad_norm.

        Minibatches are global: which rows form minibatch k of an epoch is drawn from
        ``generator`` (the same draw on every rank) over the global row indices, so every
        optimizer step sees the same rows at every DP size (``minibatch_assignment``).
        Each rank trains on its own rows of each minibatch; nothing moves between ranks."""
        a = self.values["algorithm"]
        batch = experience.learner_batch(self.seq_multiple)
        rows_total, seq = batch["tokens"].shape
        first = parallel_state.get_data_parallel_rank() * rows_total
        step_fn = ppo_forward_step(self.vocab_size, a["clip_ratio"], a["clip_value"], a["vf_coef"],
                                   a["entropy_coef"])
        metrics = {}
        for _ in range(a["ppo_epochs"]):
            assignment = minibatch_assignment(a["rollouts_per_step"], a["minibatches"], generator)
            local = assignment[first:first + rows_total].to(batch["tokens"].device)
            for k in range(a["minibatches"]):
                rows = torch.nonzero(local == k).flatten()
                micro = data_parallel_microbatches({key: v[rows] for key, v in batch.items()}, 0, 1,
                                                   self.micro_batch_size)
                lr = self.scheduler.get_lr(self.optimizer.param_groups[0])
                with self.trunk.top(self.policy.module.gpt) if self.trunk else contextlib.nullcontext():
                    result = train_step(self.policy, self.optimizer, micro, len(micro), step_fn, seq,
                                        self.micro_batch_size, scheduler=self.scheduler)
                metrics = {**result.metrics, "lr": lr, "grad_norm": float(result.grad_norm or 0.0)}
        self._weights_changed([p for p in self.policy.module.gpt.parameters() if p.requires_grad])
        return metrics

    def update_kl_controller(self, mean_kl: float, n_samples: int) -> None:
        self.kl_controller.update(mean_kl, n_steps=n_samples)

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
        return {"scheduler": self.scheduler.state_dict(), "kl_controller": self.kl_controller.state_dict(),
                "score_moments": self.score_moments.state_dict()}

    def load_algorithm_state(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.score_moments.load_state_dict(state["score_moments"])
