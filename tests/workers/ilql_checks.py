"""ILQL at one layout (launched by tests/test_ilql.py under torchrun); rank 0 saves the results.

    loss       on the first batch, through Megatron's schedule (any PP): ILQL's vocab-parallel loss
               against a plain-torch full-vocabulary implementation (trlX's formulas) on the same
               model outputs, gathered: values and gradients w.r.t. logits, Q heads and V
    steps      4 optimizer steps from the same initial weights (the exported trunk, the heads'
               seeded initialisation; target sync every 2), with and without the frozen trunk:
               every update's metrics
    polyak     the target heads after a due sync equal alpha q + (1 - alpha) target
    checkpoint the heads (each TP rank's own vocabulary slice) after a save, a wipe and a load
    decoding   greedy Q-guided walks from the 20 start nodes at beta 0, 1 and 100, from an exported
               policy + heads (--export) loaded at this layout; at beta 1 with a stop sequence; the
               Q-guided scores of random hidden states and logits against the exported heads in plain torch
"""

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from safetensors.torch import load_file

from autorlhf_nemo.algorithms.ilql.loss import ilql_loss
from autorlhf_nemo.algorithms.ilql.model import QGuidance
from autorlhf_nemo.checkpoint import run_checkpoint
from autorlhf_nemo.generation.sampling import VocabParallel
from autorlhf_nemo.algorithms.ilql.trainer import ILQLTrainer
from autorlhf_nemo.algorithms import model_class
from autorlhf_nemo.config.compose import compose_config, compose_typed_config
from autorlhf_nemo.config.validate import validate_config
from autorlhf_nemo.convert.ilql_heads import load_heads
from autorlhf_nemo.jobs import offline_dataset
from autorlhf_nemo.models.ilql import all_gather_last
from autorlhf_nemo.data.offline import collate
from autorlhf_nemo.parallel.runtime import compute_device, initialize, shutdown
from autorlhf_nemo.tasks import build_task
from autorlhf_nemo.training.engine import broadcast_from_last_stage, forward_only

TINY = ["algorithm=ilql", "task=randomwalks", "model.num_layers=4", "model.hidden_size=64", "model.ffn_hidden_size=256",
        "model.num_attention_heads=4", "model.num_query_groups=4", "train.seq_length=12", "train.global_batch_size=16",
        "train.micro_batch_size=4", "train.lr=1e-3", "algorithm.steps_for_target_q_sync=2", "algorithm.alpha=0.5",
        "algorithm.awac_beta=1.0"]
STEPS = 4


def plain_loss(logits, qs, target_qs, vs, batch, vocab, tau, gamma, cql_scale, awac_scale, awac_beta):
    """trlX's ILQL loss on full-vocabulary tensors [b, A, V] (its formulas, written out)."""
    logits, qs, target_qs = logits[..., :vocab], [q[..., :vocab] for q in qs], [q[..., :vocab] for q in target_qs]
    actions, mask = batch["action_ids"], batch["action_mask"]
    n = mask.sum()
    Q = [q.gather(-1, actions[..., None])[..., 0] for q in qs]
    target_q = torch.minimum(*[q.gather(-1, actions[..., None])[..., 0] for q in target_qs]).detach() \
        if len(target_qs) == 2 else target_qs[0].gather(-1, actions[..., None])[..., 0].detach()
    v_next = torch.cat([vs[:, 1:], torch.zeros_like(vs[:, :1])], 1) * batch["nonterminal_next"]
    y = batch["rewards"] + gamma * v_next.detach()
    loss_q = sum(((q - y) * mask).pow(2).sum() / n for q in Q)
    loss_v = (((target_q >= vs).int() * tau * (target_q - vs).pow(2)
               + (target_q < vs).int() * (1 - tau) * (target_q - vs).pow(2)) * mask).sum() / n
    b, a, v = logits.shape
    ce = lambda z: F.cross_entropy(z.reshape(-1, v), actions.reshape(-1), reduction="none").reshape(b, a)
    loss_cql = sum((ce(q) * mask).sum() / n for q in qs)
    weight = torch.exp(awac_beta * (target_q - vs)).detach()
    loss_awac = (ce(logits) * weight * mask).sum() / n
    return loss_q + loss_v + cql_scale * loss_cql + awac_scale * loss_awac


def loss_check(model, batch, cfg) -> dict:
    """Max relative differences, ours vs plain, of the loss and its gradients."""
    a, results = cfg.algorithm, {}

    def forward_step(micro, m):
        output = m(micro["tokens"], micro["position_ids"], micro["attention_mask"], micro["action_index"])

        def loss_func(out, non_loss_data=False):
            with torch.enable_grad():
                leaves = [out.logits.detach().float(), *[q.detach() for q in out.qs], out.vs.detach()]
                for t in leaves:
                    t.requires_grad_(True)
                n_q = len(out.qs)
                ours, count, _ = ilql_loss(leaves[0], leaves[1:1 + n_q], out.target_qs, leaves[-1], micro,
                                           model.vocab_size, a.tau, a.gamma, a.cql_scale, a.awac_scale, a.awac_beta)
                (ours / count).backward()
                full = [all_gather_last(t.detach()).requires_grad_(True) for t in leaves[:-1]] + \
                    [leaves[-1].detach().clone().requires_grad_(True)]
                theirs = plain_loss(full[0], full[1:1 + n_q], [all_gather_last(q) for q in out.target_qs], full[-1],
                                    micro, model.vocab_size, a.tau, a.gamma, a.cql_scale, a.awac_scale, a.awac_beta)
                theirs.backward()
            rel = lambda x, y: ((x - y).abs().max() / y.abs().max().clamp_min(1e-12)).item()
            grads = [rel(all_gather_last(o.grad)[..., :model.vocab_size], t.grad[..., :model.vocab_size])
                     for o, t in zip(leaves[:-1], full[:-1])] + [rel(leaves[-1].grad, full[-1].grad)]
            results.setdefault("value", []).append(abs((ours / count).item() - theirs.item()) / abs(theirs.item()))
            results.setdefault("grad", []).append(max(grads))
            results.setdefault("loss", []).append(theirs.item())
            return torch.zeros(()), {}

        return output, loss_func

    micro = [{k: v[i:i + 4] for k, v in batch.items()} for i in range(0, batch["tokens"].shape[0], 4)]
    forward_only(model.policy, micro, len(micro), forward_step, batch["tokens"].shape[1], 4)
    return broadcast_from_last_stage(results)


def world_max(value) -> float:
    """The largest of every rank's ``value`` (None: a rank without the heads)."""
    t = torch.tensor([-1.0 if value is None else float(value)], dtype=torch.float64, device=compute_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def checkpoint_check(model, root: Path):
    """Max |head parameter after save, wipe, load - before| (None off the last stage)."""
    heads = model.heads
    before = [p.detach().clone() for p in heads.parameters()] if heads is not None else []
    folder = run_checkpoint.save(root, 1, model, {"step": 1}, keep_last=1)
    if heads is not None:
        with torch.no_grad():
            for p in heads.parameters():
                p.zero_()
    run_checkpoint.load(folder, model)
    if heads is None:
        return None
    return max((p - b).abs().max().item() for p, b in zip(heads.parameters(), before))


def guidance_check(model, export: str, vocab: int, beta: float = 3.0):
    """Max |score - plain| of QGuidance on vocab-parallel shards vs the formula on the exported
    full tensors: log_softmax(logits) + beta (min_i target_q_i(h) - v(h)). None off the last stage."""
    heads = model.heads
    if heads is None:
        return None
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(3, model.run_cfg.model.hidden_size, generator=gen)
    padded = model.policy.module.gpt.vocab_size
    logits = torch.randn(3, padded, generator=gen)
    device = compute_device()
    tp, rank = parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank()
    vp = VocabParallel(parallel_state.get_tensor_model_parallel_group(), rank * padded // tp, vocab)
    local = vp.mask_padding(logits.chunk(tp, dim=-1)[rank].to(device))
    ours = all_gather_last(QGuidance(heads, beta)(vp, local, hidden.to(device), None))[:, :vocab].cpu()
    w = load_file(str(Path(export) / "ilql_heads.safetensors"))
    mlp = lambda name, h: F.linear(torch.relu(F.linear(h, w[f"{name}.fc1.weight"], w[f"{name}.fc1.bias"])),
                                   w[f"{name}.fc2.weight"], w[f"{name}.fc2.bias"])
    target = torch.minimum(mlp("target_q_heads.0", hidden), mlp("target_q_heads.1", hidden))
    plain = torch.log_softmax(logits[:, :vocab], -1) + beta * (target - mlp("v_head", hidden))
    return (ours - plain).abs().max().item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--export", required=True, help="an ILQL run's hf_export (policy + heads)")
    parser.add_argument("--decode-only", action="store_true")
    parser.add_argument("overrides", nargs="*", help="the layout")
    args = parser.parse_args()
    runtime = initialize(compose_typed_config([*TINY, *args.overrides]))
    results = {"runtime": runtime.describe()}
    for unfrozen in ([] if args.decode_only else (-1, 2)):
        overrides = [*TINY, *args.overrides, f"algorithm.num_layers_unfrozen={unfrozen}",
                     f"model.hf_checkpoint={args.export}"]
        validate_config(compose_config(overrides), world_size=runtime.world_size)
        cfg = compose_typed_config(overrides)
        task = build_task(cfg)
        model = model_class("ilql")(cfg, runtime, task.init_weights)
        trainer = ILQLTrainer(model, task, cfg, offline_dataset(cfg, task))
        if unfrozen == -1:
            rows = [trainer.dataset.rows[i] for i in trainer._local(trainer.batch_rows(0))]
            results["loss_check"] = loss_check(model, collate(rows, task.pad_token_id, model.seq_multiple), cfg)
        steps = []
        for step in range(STEPS):
            if step == 1 and model.heads is not None:
                targets_before = [p.detach().clone() for p in model.heads.target_q_heads.parameters()]
            steps.append(trainer.step())
            if step == 1 and model.heads is not None:  # update 2: a sync is due
                alpha = cfg.algorithm.alpha
                expected = [alpha * q.detach() + (1 - alpha) * t for q, t in
                            zip(model.heads.q_heads.parameters(), targets_before)]
                results[("polyak", unfrozen)] = max((t - e).abs().max().item() for t, e in
                                                    zip(model.heads.target_q_heads.parameters(), expected))
                results[("moved", unfrozen)] = max((t - b).abs().max().item() for t, b in
                                                   zip(model.heads.target_q_heads.parameters(), targets_before))
        results[("steps", unfrozen)] = steps
        if unfrozen == -1:
            results["checkpoint"] = world_max(checkpoint_check(model, Path(args.out).parent / "ckpt"))
        results[("polyak", unfrozen)] = world_max(results.get(("polyak", unfrozen)))
        results[("moved", unfrozen)] = world_max(results.get(("moved", unfrozen)))
    # decoding from the exported policy and heads
    overrides = [*TINY, *args.overrides, f"model.hf_checkpoint={args.export}"]
    cfg = compose_typed_config(overrides)
    task = build_task(cfg)
    model = model_class("ilql")(cfg, runtime, task.init_weights)
    load_heads(model, args.export)
    trainer = ILQLTrainer(model, task, cfg, offline_dataset(cfg, task))
    decoded = {}
    for beta in (0.0, 1.0, 100.0):
        trainer.beta = beta
        out = trainer.generator.generate(trainer.eval_ids, trainer._sampling(seed=0, row_seeds=None, greedy=True))
        decoded[beta] = out.responses()
    results["decoded"] = decoded
    trainer.beta = 1.0  # stop sequences end Q-guided walks too: stop at the first 'a' (the goal, token 1)
    params = trainer._sampling(seed=0, row_seeds=None, greedy=True)
    params.stop_token_sequences = [[1]]
    stopped = trainer.generator.generate(trainer.eval_ids, params)
    results["stopped"] = (stopped.responses(), stopped.stop_reasons)
    results["guidance"] = world_max(guidance_check(model, args.export, cfg.model.vocab_size))
    if dist.get_rank() == 0:
        torch.save(results, args.out)
    dist.barrier()
    shutdown()


if __name__ == "__main__":
    main()
