"""What ``python -m autorlhf_nemo`` runs once the config is composed.

With an algorithm (``algorithm=ppo|online_dpo|rloo|grpo``, and a task) it is an RL
run: :func:`run_rl`. Without an algorithm the job builds the configured model at the configured layout,
loads its checkpoint, and reports per-rank parameter counts: a smoke test of
a layout on real hardware before a long run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from autorlhf_nemo.config.schema import SUPERVISED_ALGORITHMS, RootConfig, typed_config
from autorlhf_nemo.config.validate import ConfigError, validate_config


def run_job(cfg) -> None:
    """The job of a composed (and validated) config."""
    logging.getLogger("megatron").setLevel(logging.WARNING)
    cfg = typed_config(cfg)
    if cfg.algorithm is not None:
        run_rl(cfg)
        return
    import torch.distributed as dist

    from autorlhf_nemo.convert import resolve_hf_checkpoint
    from autorlhf_nemo.convert.hf_llama import load_hf_checkpoint
    from autorlhf_nemo.models.gpt import build_model
    from autorlhf_nemo.parallel.runtime import initialize, shutdown

    runtime = initialize(cfg)  # validates the layout before any process group starts
    model = build_model(cfg)
    if cfg.model.hf_checkpoint:
        load_hf_checkpoint(model, resolve_hf_checkpoint(cfg.model.hf_checkpoint), cfg.model)
    local = sum(p.numel() for p in model.parameters())
    # Norm weights are replicated on every TP rank: count them once per replica.
    unique = sum(p.numel() for p in model.parameters()
                 if getattr(p, "tensor_model_parallel", False) or runtime.tp_rank == 0)
    counts = [None] * runtime.world_size
    dist.all_gather_object(counts, (runtime.rank, runtime.tp_rank, runtime.pp_rank, runtime.dp_rank,
                                    local, unique))
    if runtime.rank == 0:
        print(f"layout: {runtime.describe()}")
        for rank, tp, pp, dp, n, _ in counts:
            print(f"  rank {rank}: tp={tp} pp={pp} dp={dp} parameters={n:,}")
        replica = sum(u for _, _, _, dp, _, u in counts if dp == 0)
        print(f"parameters per model replica: {replica:,}")
    dist.barrier()
    shutdown()


def run_rl(cfg, prompts=None, reward_fn=None, eval_prompts=None, samples=None, rewards=None, dataset=None) -> dict:
    """A run at the layout of ``cfg`` (composed, or a RootConfig): build the task, load the data
    (ILQL's samples; SFT's and DPO's ``dataset``, else data.path) and the algorithm's model, train
    (resuming from the newest complete checkpoint), export, report.
    Returns the trainer's summary (before/after evaluation, per-step history).

    A checkpoint save that failed (``run_checkpoint.CheckpointSaveError``) does not lose
    the training: the run goes on, exports the policy, writes the summary (its
    ``checkpoint_error``), and then raises that error.

    rollout.placement=split: the generator ranks run rollout/generator_loop.py and return None
    as soon as the learner has their last batch (they wait for none of its final evaluation,
    save and export)."""
    import time

    start = time.perf_counter()
    validate_config(cfg)  # before the task loads a tokenizer or anything starts
    cfg = typed_config(cfg)

    import torch.distributed as dist

    from autorlhf_nemo.parallel.placement import GENERATOR, learners_as_world
    from autorlhf_nemo.parallel.runtime import initialize, shutdown
    from autorlhf_nemo.tasks import build_task

    task = build_task(cfg, prompts=prompts, reward_fn=reward_fn, eval_prompts=eval_prompts, samples=samples,
                      rewards=rewards)
    # bad rows fail here, before any process group or model
    offline = offline_dataset(cfg, task) if task.samples is not None else None
    if cfg.algorithm.name in SUPERVISED_ALGORITHMS:
        offline = supervised_data(cfg, task, dataset)
        cfg = with_epochs(cfg, len(offline.train))
    elif dataset is not None:
        raise ConfigError([f"a dataset trains algorithm=sft or algorithm=dpo, not algorithm={cfg.algorithm.name}"])
    runtime = initialize(cfg)
    if not runtime.placement.split:
        summary, save_error = _train(cfg, runtime, task, offline, start)
    elif runtime.role == GENERATOR:  # rollout.placement=split: this rank only samples, then ends
        from autorlhf_nemo.rollout.generator_loop import run_generator

        run_generator(cfg, runtime, task)
        summary, save_error = None, None
    else:
        with learners_as_world(runtime.links):  # collectives without a group: over the learners only
            summary, save_error = _train(cfg, runtime, task, offline, start)
    shutdown()
    if save_error is not None:
        raise save_error
    return summary


def _train(cfg: RootConfig, runtime, task, offline, start: float) -> tuple[dict, Exception | None]:
    """Train, export and report on the learner ranks: (the summary, a checkpoint save error or None)."""
    import json
    import time

    import torch.distributed as dist

    supervised = cfg.algorithm.name in SUPERVISED_ALGORITHMS
    if runtime.rank == 0:
        print(f"runtime: {runtime.describe()}", flush=True)
        if offline is not None:
            print(offline.summary() if supervised else offline_summary(offline), flush=True)
    from autorlhf_nemo.algorithms import model_class
    from autorlhf_nemo.algorithms.trainer import RLTrainer

    model = model_class(cfg.algorithm.name)(cfg, runtime, task.init_weights)
    if supervised:
        from autorlhf_nemo.algorithms.offline_trainer import OfflineTrainer

        if cfg.algorithm.name == "dpo" and cfg.algorithm.reference == "precompute":
            model.precompute_reference([offline.train, offline.eval], task.pad_token_id, Path(cfg.run_dir),
                                       log=print if runtime.rank == 0 else lambda *_: None)
        trainer = OfflineTrainer(model, task, cfg, offline.train, offline.eval, *_eval_prompts(cfg, task, offline))
    elif offline is not None:
        from autorlhf_nemo.algorithms.ilql.trainer import ILQLTrainer

        trainer = ILQLTrainer(model, task, cfg, offline)
    else:
        trainer = RLTrainer(model, task, cfg)
    summary = trainer.fit()
    run_dir = Path(cfg.run_dir)
    if cfg.checkpoint.export_hf:
        from autorlhf_nemo.convert import resolve_hf_checkpoint
        from autorlhf_nemo.convert.hf_llama import export_hf_checkpoint

        source = cfg.model.hf_checkpoint
        export_hf_checkpoint(model.policy.module.gpt, cfg.model, run_dir / "hf_export",
                             tokenizer_dir=resolve_hf_checkpoint(source) if source else None)
        if cfg.algorithm.name == "ilql":
            from autorlhf_nemo.convert.ilql_heads import export_heads

            export_heads(model, cfg, run_dir / "hf_export")
    if supervised:
        summary["dataset"] = {"source": offline.source, "type": offline.kind, "counts": offline.counts}
    elif offline is not None:
        summary["dataset"] = {"rows": len(offline.rows), "dropped": offline.dropped,
                              "reward_mean": offline.reward_mean, "reward_std": offline.reward_std}
    summary["wall_seconds"] = time.perf_counter() - start
    summary["eval_prompts"] = task.eval_set  # null: the task's held-out prompts
    summary["eval_note"] = task.eval_note
    summary["checkpoint_error"] = str(trainer.save_error) if trainer.save_error else None
    if runtime.rank == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        print(report(summary, cfg), flush=True)
    dist.barrier()  # over the learners (the default group of a split run's learners)
    return summary, trainer.save_error


def supervised_data(cfg: RootConfig, task, dataset=None):
    """SFT's or DPO's rows (data/supervised.py) of ``dataset`` (a path or a datasets.Dataset),
    else data.path, encoded with the task's tokenizer within data.max_length (train.seq_length)."""
    from autorlhf_nemo.data.supervised import load_supervised

    if task.tokenizer is None:
        raise ConfigError([f"algorithm={cfg.algorithm.name} encodes text with a tokenizer, which task={task.name} "
                           f"does not have: use task=custom (the default) or task=sentiment with a model that has "
                           f"an HF checkpoint (model.hf_checkpoint)"])
    from autorlhf_nemo.models.gpt import transformer_engine_available
    from autorlhf_nemo.tasks import dataset_path

    if cfg.data.pack and cfg.train.micro_batch_size > 1 and transformer_engine_available():
        raise ConfigError([f"data.pack=true under Transformer Engine takes one packed row per micro-batch (its thd "
                           f"format): set train.micro_batch_size=1 (got {cfg.train.micro_batch_size}; a packed row "
                           f"already holds several samples)"])
    source = dataset if dataset is not None or cfg.data.path is None else dataset_path(cfg.data.path)
    return load_supervised(cfg.algorithm.name, cfg.data, task.tokenizer, cfg.data.max_length or cfg.train.seq_length,
                           cfg.train.seed, source)


def with_epochs(cfg: RootConfig, rows: int) -> RootConfig:
    """``cfg`` with train.total_steps = ceil(algorithm.num_epochs x rows / train.global_batch_size)
    where num_epochs is set."""
    import dataclasses
    import math

    epochs, t = cfg.algorithm.num_epochs, cfg.train
    if epochs is None:
        return cfg
    steps = max(1, math.ceil(epochs * rows / t.global_batch_size))
    if t.lr_warmup_steps >= (t.lr_decay_steps or steps):  # validate_config left this rule to here
        raise ConfigError([f"train.lr_warmup_steps={t.lr_warmup_steps} must be below the run's "
                           + (f"train.lr_decay_steps={t.lr_decay_steps}" if t.lr_decay_steps else
                              f"{steps} optimizer steps (algorithm.num_epochs={epochs:g} x {rows} rows / "
                              f"train.global_batch_size={t.global_batch_size})")
                           + ": shorten the warm-up or train longer"])
    return dataclasses.replace(cfg, train=dataclasses.replace(t, total_steps=steps))


def _eval_prompts(cfg: RootConfig, task, data) -> tuple:
    """(eval_prompts, decodes, scored) of an SFT or DPO trainer: the task's own held-out prompts
    where it has them (task=sentiment, or eval_prompts given to train()); else the held-out rows'
    prompts, task.num_eval_prompts of them with a reward_fn, logging.num_samples without (their
    completions shown, not scored)."""
    decodes = cfg.algorithm.eval_generation
    from autorlhf_nemo.tasks import no_reward

    scored = task.reward_fn is not no_reward
    if task.eval_prompts:
        return None, decodes, scored
    prompts = data.eval_prompts[:cfg.task.num_eval_prompts if scored else cfg.logging.num_samples]
    if prompts:
        task.eval_set = f"the first {len(prompts)} held-out rows' prompts"
    return prompts, decodes and bool(prompts), scored


def offline_dataset(cfg: RootConfig, task):
    """The task's samples and rewards as training rows (data/offline.py)."""
    from autorlhf_nemo.data.offline import tokenize_samples

    a = cfg.algorithm
    return tokenize_samples(task.samples, task.rewards, task.encode, task.eos_token_ids[0], task.start_token_id,
                            cfg.train.seq_length, reward_normalization=a.reward_normalization,
                            drop_bad_rows=a.drop_bad_rows, encode_output=task.encode_output)


def offline_summary(dataset) -> str:
    dropped = ", ".join(f"{n} {reason}" for reason, n in dataset.dropped.items() if n) or "none"
    return (f"offline dataset: {len(dataset.rows)} rows (dropped: {dropped}); reward mean "
            f"{dataset.reward_mean:.3f} std {dataset.reward_std:.3f}")


def report(summary: dict, cfg: RootConfig) -> str:
    """Held-out loss figures before and after (SFT, DPO), reward before and after (naming the
    evaluation prompts when they are not held out) with each evaluation pass's figures, final KL,
    and a few before/after samples."""
    lines = [f"== {cfg.algorithm.name} on {cfg.task.name}: {cfg.train.total_steps} steps, run dir {cfg.run_dir}"]
    before, after = summary["before"], summary["after"]
    for name, value in after.get("heldout", {}).items():
        was = before.get("heldout", {}).get(name) if before else None
        lines.append(f"held-out {name}: " + (f"{was:.4f} -> {value:.4f}" if was is not None else f"{value:.4f}"))
    if after["reward"] is not None:
        lines += _reward_lines(summary, cfg, before, after)
    steps = [h for h in summary["history"] if "time/step" in h]
    if steps:
        lines.append(f"wall time {summary['wall_seconds'] / 60:.1f} min, "
                     f"{sum(h['time/step'] for h in steps) / len(steps):.1f} s per step")
    last = summary["history"][-1]
    if "rollout/kl" in last:
        lines.append(f"KL(policy || initial policy) at the last step: {last['rollout/kl']:.3f} nats/sample")
    for title, part in (("before", before), ("after", after)):
        for prompt, output, reward in (part or {}).get("samples", []):
            lines.append(f"[{title} {reward:+.2f}] {prompt!r} -> {output!r}")
    return "\n".join(lines)


def _reward_lines(summary: dict, cfg: RootConfig, before: dict | None, after: dict) -> list[str]:
    lines = []
    label = f"eval reward ({summary['eval_prompts']})" if summary["eval_prompts"] else "eval reward"
    if summary.get("eval_note"):
        lines.append(f"eval reward: {summary['eval_note']}")
    if before and "beta" in after:
        # ILQL: the change from the initial policy alone (beta 0; the untrained heads only add
        # noise at beta > 0), else from the reported beta's own figure before training
        baseline = "0" if "0" in before["by_beta"] else f"{after['beta']:g}"
        lines.append(f"eval reward before: the initial policy at beta={baseline}")
        before = {**before, "reward": before["by_beta"][baseline]}
    if before:
        lines.append(f"{label} before: {before['reward']:.3f}")
    if "beta" in after:  # ILQL: the figure of one decoding beta, compared with that beta's before
        lines.append(f"{label} reported at beta={after['beta']:g} ("
                     + ("algorithm.report_beta" if cfg.algorithm.report_beta is not None else
                        "the best of algorithm.betas on these prompts: an optimistic pick")
                     + "); by beta: " + ", ".join(f"{b}: {before['by_beta'][b]:.3f} -> {r:.3f}" if before else f"{b}: {r:.3f}"
                                                  for b, r in after["by_beta"].items()))
    lines.append(f"{label} after:  {after['reward']:.3f}"
                 + (f"  (change {after['reward'] - before['reward']:+.3f})" if before else ""))
    for name, value in after.get("rewards", {}).items():
        was = f"{before['rewards'][name]:.3f} -> " if before and name in before.get("rewards", {}) else ""
        lines.append(f"  {name}: {was}{value:.3f}")
    return lines
