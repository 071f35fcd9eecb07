"""SFT and offline DPO at one layout (launched by tests/test_supervised.py under torchrun); rank 0
saves the results. Every layout starts from the same tiny HF checkpoint (--hf) and trains on the
same seeded synthetic rows (token ids; prompts untrained, mask[0] = 0):

    sft        2 optimizer steps of 8 rows: each update's loss and grad norm; then the held-out
               loss of 12 rows unpacked and packed (best-fit into rows of 40 tokens)
    dpo        2 optimizer steps of 8 pairs with the reference precomputed (reference_logps.pt in
               --run-dir), then again from the start with reference=online: each update's metrics
    dpo_ipo    2 steps with loss_type=ipo (averaged log-probs), label smoothing off, sft_weight 0.5
"""

import argparse
from pathlib import Path

import torch
import torch.distributed as dist

from autorlhf_nemo.algorithms import model_class
from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.data.supervised import PairRow, pack_sequences
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.rollout.steps import share
from autorlhf_nemo.tasks import _load_hf_weights

BASE = ["model=tiny_llama", "train.global_batch_size=8", "train.micro_batch_size=2", "train.lr=1e-3",
        "train.total_steps=2", "train.seq_length=64", "logging.progress_bar=false"]
STEPS, BATCH, PAD = 2, 8, 0


def sequence(generator, prompt_len: int, response_len: int):
    """(ids, mask): random ids in 3..249, the response trained."""
    ids = torch.randint(3, 250, (prompt_len + response_len,), generator=generator).tolist()
    return ids, [0] * prompt_len + [1] * response_len


def synthetic_rows(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = lambda low, high: int(torch.randint(low, high, (1,), generator=g))  # noqa: E731
    sft = [[sequence(g, lengths(2, 10), lengths(1, 12))] for _ in range(STEPS * BATCH + 12)]
    pairs = []
    for _ in range(STEPS * BATCH + 4):
        p = lengths(2, 8)
        chosen, rejected = sequence(g, p, lengths(1, 10)), sequence(g, p, lengths(1, 10))
        rejected = (chosen[0][:p] + rejected[0][p:], rejected[1])  # one prompt for both
        pairs.append(PairRow(chosen, rejected))
    return sft[:STEPS * BATCH], sft[STEPS * BATCH:], pairs


def train(model, rows, log):
    """STEPS optimizer steps of BATCH consecutive rows each; this DP rank's share of each."""
    from megatron.core import parallel_state

    dp_rank, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    for step in range(STEPS):
        local = share(rows[step * BATCH:(step + 1) * BATCH], dp_rank, dp)
        metrics, _ = model.learn(model.collate(local, PAD))
        log.append(metrics)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--hf", required=True)
    parser.add_argument("--run-dir", required=True)
    args, overrides = parser.parse_known_args()
    common = [*BASE, f"model.hf_checkpoint={args.hf}", f"run_dir={args.run_dir}", *overrides]
    sft_rows, heldout, pairs = synthetic_rows()
    results = {}

    cfg = compose_typed_config(["algorithm=sft", *common])
    runtime = initialize(cfg)
    results["runtime"] = runtime.describe()
    model = model_class("sft")(cfg, runtime, _load_hf_weights)
    results["sft"] = []
    train(model, sft_rows, results["sft"])
    results["sft_heldout"] = model.evaluate_rows(heldout, PAD)
    results["sft_heldout_packed"] = model.evaluate_rows(pack_sequences([r[0] for r in heldout], 40), PAD)
    del model

    for name, extra in (("dpo", []), ("dpo_online", ["algorithm.reference=online"]),
                        ("dpo_ipo", ["algorithm.loss_type=ipo", "algorithm.sft_weight=0.5"])):
        cfg = compose_typed_config(["algorithm=dpo", *common, *extra])
        model = model_class("dpo")(cfg, runtime, _load_hf_weights)
        rows = [PairRow(p.chosen, p.rejected) for p in pairs]
        if cfg.algorithm.reference == "precompute":
            model.precompute_reference([rows], PAD, Path(args.run_dir), log=lambda *_: None)
            results[f"{name}_reference"] = [r.reference for r in rows]
        results[name] = []
        train(model, rows, results[name])
        results[f"{name}_heldout"] = model.evaluate_rows(rows[STEPS * BATCH:], PAD)
        del model

    if dist.get_rank() == 0:
        torch.save(results, args.out)
    shutdown()


if __name__ == "__main__":
    main()
