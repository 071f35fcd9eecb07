"""PPO's tensor-parallel pieces at one TP layout vs unsharded formulas
(launched by tests/test_heads.py): the value head and vocab-parallel entropy.

Feeds fixed hidden states [s, b, H] (scattered along the sequence under SP),
and records on rank 0: the values, and the gradients of W1 and W2 (gathered
to full matrices) for loss = sum(values * c), next to the same quantities
computed from the full weights with plain torch ops.
"""

import argparse

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import scatter_to_sequence_parallel_region

from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.models.gpt import transformer_config
from autorlhf_nemo.models.heads import ValueHead
from autorlhf_nemo.ops.vocab_parallel import entropy
from autorlhf_nemo.parallel.runtime import initialize, shutdown


def gather_tp(t, dim):
    group = parallel_state.get_tensor_model_parallel_group()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = compose_typed_config(args.overrides)
    initialize(cfg)
    config = transformer_config(cfg)
    head = ValueHead(config, out_features=2, seed=5, init_std=0.3)
    s, b, h = 8, 3, config.hidden_size
    hidden_full = torch.randn(s, b, h, generator=torch.Generator().manual_seed(1))
    coef = torch.randn(s, b, 2, generator=torch.Generator().manual_seed(2))
    hidden = hidden_full.clone()
    if config.sequence_parallel:
        hidden = scatter_to_sequence_parallel_region(hidden)
    values = head(hidden.requires_grad_())
    (values * coef).sum().backward()
    grad_w1 = gather_tp(head.fc1.weight.grad, 0)
    grad_w2 = gather_tp(head.fc2.weight.grad, 1)

    # Unsharded reference from the same seeded full matrices.
    gen = torch.Generator().manual_seed(5)
    w1 = (torch.randn(2 * h, h, generator=gen) * 0.3).requires_grad_()
    w2 = (torch.randn(2, 2 * h, generator=gen) * 0.3).requires_grad_()
    ref = torch.relu(hidden_full @ w1.t()) @ w2.t()
    (ref * coef).sum().backward()
    # Entropy of vocab-parallel logits (vocab 250 padded to 256: padding columns must not count).
    vocab, padded = 250, 256
    full = torch.randn(4, 5, padded, generator=torch.Generator().manual_seed(3)) * 2
    tp, rank = (parallel_state.get_tensor_model_parallel_world_size(),
                parallel_state.get_tensor_model_parallel_rank())
    local = full.chunk(tp, dim=-1)[rank].clone().requires_grad_()
    ent = entropy(local, vocab)
    ent.sum().backward()
    full_ref = full[..., :vocab].clone().requires_grad_()
    ref_ent = torch.distributions.Categorical(logits=full_ref).entropy()
    ref_ent.sum().backward()
    grad_ref = torch.nn.functional.pad(full_ref.grad, (0, padded - vocab))
    entropy_grad = gather_tp(local.grad, -1)
    if dist.get_rank() == 0:
        torch.save({"values": values.detach(), "ref": ref.detach(), "grad_w1": grad_w1, "ref_w1": w1.grad,
                    "grad_w2": grad_w2, "ref_w2": w2.grad, "entropy": ent.detach(), "ref_entropy": ref_ent.detach(),
                    "entropy_grad": entropy_grad, "ref_entropy_grad": grad_ref}, args.out)
    shutdown()


if __name__ == "__main__":
    main()
