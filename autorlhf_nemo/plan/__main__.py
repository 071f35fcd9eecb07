"""``python -m autorlhf_nemo.plan <overrides> [--json]``: check a layout before asking for GPUs.

Composes the same config as ``python -m autorlhf_nemo <overrides>`` (e.g.
``recipe=llama3_70b_ppo``), validates it at the world size of
``cluster.nodes x cluster.gpus_per_node``, prints parameters and memory per
pipeline stage, and exits 2 with the figures when a stage does not fit
``cluster.gpu_memory_gib`` or a divisibility rule breaks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import warnings

from autorlhf_nemo.plan.memory import GIB


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def format_ilql_heads(heads, tp: int) -> str:
    """One line: the ILQL heads' parameters at the chosen width w and at trlX's w = 2h."""
    def figure(h) -> str:
        return f"{h.total():,} ({h.total() / 1e9:.2f}e9; {h.total(tp):,} per TP rank)"
    q = heads.q_heads
    return (f"ILQL heads on the last stage at w={heads.width} (algorithm.head_width; null: model.hidden_size): "
            f"V {heads.v():,} + {q} Q + {q} target Q x {heads.q():,} = {figure(heads)}; "
            f"w=2h={2 * heads.hidden} would hold {figure(heads.at_width(2 * heads.hidden))}")


def format_plan(plan) -> str:
    learners = plan.world_size - plan.generator_ranks
    sync_column = f" {'sync':>5}" if plan.generator_ranks else ""
    split = (f" (split: {learners} learner GPUs, {plan.generator_ranks} generator GPUs as "
             f"{plan.generator_ranks // plan.generator_tp} replica(s) of TP{plan.generator_tp})"
             if plan.generator_ranks else "")
    lines = [
        f"plan: {plan.model}{', algorithm ' + plan.algorithm if plan.algorithm else ''} on "
        f"{plan.world_size} GPUs{split}: learners TP{plan.tp} x PP{plan.pp} x CP{plan.cp} x DP{plan.dp}, sequence parallel "
        f"{'on' if plan.sequence_parallel else 'off'}, distributed optimizer "
        f"{'on' if plan.distributed_optimizer else 'off'}, recompute {plan.recompute or 'none'}",
        "",
        "parameters per rank (the TP ranks of a stage hold equal shards; DP ranks are replicas)",
        f"{'stage':>5} {'layers':>6} {'policy trunk':>15} {'heads':>13} {'trainable':>15} {'reference own':>15}",
    ]
    for stage, c in enumerate(plan.counts):
        lines.append(f"{stage:>5} {c.layers:>6} {c.trunk:>15,} {c.head:>13,} {c.trainable:>15,} {c.reference:>15,}")
    lines += [
        f"model parameters, summed over the {plan.tp * plan.pp} ranks of one replica "
        f"(TP-replicated norm weights once): {plan.total_parameters:,} ({plan.total_parameters / 1e9:.2f}e9)",
    ]
    if plan.ilql_heads is not None:
        lines.append(format_ilql_heads(plan.ilql_heads, plan.tp))
    lines += [
        "",
        f"memory per GPU in GiB (budget {plan.gpu_memory / GIB:g} GiB; peak = weights + gradients + optimizer + "
        f"reference + max(activations + logits, KV cache) + reserved"
        + (" + the weight-sync snapshot (sync) on sending ranks)" if plan.generator_ranks else ")"),
        f"{'stage':>5} {'weights':>8} {'grads':>7} {'optim':>7} {'(no ZeRO)':>9} {'ref':>6} {'activ':>7} "
        f"{'logits':>7} {'KV':>6} {'rsvd':>5}{sync_column} {'peak':>7}  fits",
    ]
    for m in plan.memory:
        lines.append(
            f"{m.stage:>5} {_gib(m.weights):>8} {_gib(m.gradients):>7} {_gib(m.optimizer):>7} "
            f"{_gib(m.optimizer_unsharded):>9} {_gib(m.reference):>6} {_gib(m.activations):>7} {_gib(m.logits):>7} "
            f"{_gib(m.kv_cache):>6} {_gib(m.reserved):>5}"
            + (f" {_gib(m.sync_snapshot):>5}" if plan.generator_ranks else "")
            + f" {_gib(m.peak):>7}  {'yes' if m.peak <= plan.gpu_memory else 'NO'}")
    g = plan.generator
    if g is not None:
        lines += ["", f"generator GPU (TP{plan.generator_tp}, {g.parameters:,} parameters): weights {_gib(g.weights)}, "
                      f"KV cache {_gib(g.kv_cache)}, logits {_gib(g.logits)}, weight-sync receive buffer "
                      f"{_gib(g.receive)}, reserved {_gib(g.reserved)} -> peak {_gib(g.peak)} GiB  "
                      f"fits {'yes' if g.peak <= plan.gpu_memory else 'NO'}"]
    return "\n".join(lines)


def plan_as_dict(plan) -> dict:
    out = dataclasses.asdict(plan)
    out["total_parameters"] = plan.total_parameters
    for m, stage in zip(plan.memory, out["memory"]):
        stage["peak"] = m.peak
    if plan.generator is not None:
        out["generator"]["peak"] = plan.generator.peak
    out["problems"] = plan.problems()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autorlhf_nemo.plan", description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m autorlhf_nemo")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    logging.getLogger("megatron").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    from hydra.errors import HydraException

    from autorlhf_nemo.config.compose import compose_config
    from autorlhf_nemo.plan.planner import ConfigError, plan_layout

    try:
        plan = plan_layout(compose_config(args.overrides))
    except (ConfigError, HydraException) as error:  # bad overrides, bad layout: no traceback
        print(f"autorlhf_nemo.plan: {error}", file=sys.stderr)
        return 2
    print(json.dumps(plan_as_dict(plan), indent=1) if args.json else format_plan(plan))
    problems = plan.problems()
    if problems:
        print("\nautorlhf_nemo.plan: the plan does not fit:\n" + "\n".join(f"  - {p}" for p in problems),
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
