"""ILQL's loss (Snell et al. 2022, with trlX's stop-gradients), on vocab-parallel tensors.

Per action t of a sample (state s_t: the prefix before action token a_t), with Q_i the Q heads,
Qbar_i the target heads, V the V head, r_t the reward (the return on the last action, else 0)
and n_{t+1} = 1 when s_{t+1} is not terminal (another action follows; V = 0 after the last):

    y_t    = r_t + gamma sg[V(s_{t+1})] n_{t+1}
    L_Q    = sum_i mean_t (Q_i(s_t, a_t) - y_t)^2
    Qbar_t = sg[min_i Qbar_i(s_t, a_t)]
    L_V    = mean_t |tau - 1[Qbar_t < V(s_t)]| (Qbar_t - V(s_t))^2              (expectile tau)
    L_CQL  = sum_i mean_t CE(Q_i(s_t, .), a_t)                                (vocab-parallel logsumexp)
    L_AWAC = mean_t sg[exp(awac_beta (Qbar_t - V(s_t)))] CE(logits_t, a_t)     (awac_beta 0: cloning)
    L      = L_Q + L_V + cql_scale L_CQL + awac_scale L_AWAC

mean_t is over the action tokens of the whole batch (all micro-batches and DP ranks: the
function returns sums and the token count, and Megatron divides by the global count),
as trlX divides by the number of non-terminal steps. Heads and losses in fp32.
"""

from __future__ import annotations

import torch

from autorlhf_nemo.ops.vocab_parallel import pick, token_log_probs


def ilql_loss(logits, qs, target_qs, vs, batch: dict, vocab_size: int, tau: float, gamma: float,
              cql_scale: float, awac_scale: float, awac_beta: float):
    """logits [b, A, V/tp]; qs, target_qs: lists of [b, A, V/tp]; vs [b, A] (V at each action's
    state); batch: action_ids [b, A], action_mask [b, A], rewards [b, A], nonterminal_next [b, A].
    Returns (loss sum over action tokens, action count, {name: (sum, count)})."""
    actions, mask = batch["action_ids"], batch["action_mask"].float()
    count = mask.sum()
    vs = vs.float()
    q_taken = [pick(q.float(), actions) for q in qs]                                  # [b, A]
    with torch.no_grad():
        target = torch.stack([pick(q.float(), actions) for q in target_qs]).min(dim=0).values
        v_next = torch.cat([vs[:, 1:], torch.zeros_like(vs[:, :1])], dim=1) * batch["nonterminal_next"]
        y = batch["rewards"].float() + gamma * v_next
        awac_weight = torch.exp(awac_beta * (target - vs))
    loss_q = sum((q - y).pow(2) for q in q_taken)
    expectile = torch.where(target < vs, 1 - tau, tau)
    loss_v = expectile * (target - vs).pow(2)
    loss_cql = sum(-token_log_probs(q, actions, vocab_size) for q in qs)
    loss_awac = awac_weight * -token_log_probs(logits, actions, vocab_size)
    per_token = loss_q + loss_v + cql_scale * loss_cql + awac_scale * loss_awac
    total = lambda t: (t.detach() * mask).sum()
    reports = {"loss_q": (total(loss_q), count), "loss_v": (total(loss_v), count),
               "loss_cql": (total(loss_cql), count), "loss_awac": (total(loss_awac), count),
               "q": (total(q_taken[0]), count), "target_q": (total(target), count), "v": (total(vs), count),
               "advantage": (total(target - vs), count), "awac_weight": (total(awac_weight), count)}
    return (per_token * mask).sum(), count, reports
