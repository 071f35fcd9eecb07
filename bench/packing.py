"""SFT training throughput with and without packing (data.pack), on a dataset of mixed lengths.

SmolLM2-135M-Instruct (all layers trained, fp32, the local layer spec: a block-diagonal causal
mask), one process. The same sequences each turn: 128 seeded synthetic ones (--sequences), 70% short (16-64
tokens) and 30% long (128-448), the response being the last half of each. Unpacked: batches of 8
sequences, each padded to its longest; packed: best-fit decreasing into rows of 512 tokens, 2 rows
per batch. A turn is one pass over all sequences (forward, backward, optimizer step per batch);
turns alternate packed / unpacked (interleaved). Reported: real (non-padding) tokens per second,
padding share, and the ratio packed / unpacked per pair of turns.

    OMP_NUM_THREADS=2 .venv/bin/python bench/packing.py [--repeats 2] [--sequences 128] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

from supervised_sentiment import cpu_model


def sequences(n: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        low, high = (16, 64) if torch.rand((), generator=g) < 0.7 else (128, 448)
        length = int(torch.randint(low, high + 1, (), generator=g))
        ids = torch.randint(3, 49000, (length,), generator=g).tolist()
        out.append((ids, [0] * (length - length // 2) + [1] * (length // 2)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="64 sequences, 1 repeat")
    args = parser.parse_args()
    n, repeats = (64, 1) if args.quick else (args.sequences, args.repeats)
    print(f"CPU: {cpu_model()}; {n} sequences, {repeats} interleaved pairs of turns; projected "
          f"{4 * repeats * n / 64:.0f} min (the 2-core VM: about 4 min per pair of turns over 64 sequences)", flush=True)

    from autorlhf_nemo.algorithms import model_class
    from autorlhf_nemo.config.compose import compose_typed_config
    from autorlhf_nemo.data.supervised import pack_sequences
    from autorlhf_nemo.parallel.runtime import initialize, shutdown
    from autorlhf_nemo.tasks import _load_hf_weights

    cfg = compose_typed_config(["algorithm=sft", "train.lr=1e-7", "train.micro_batch_size=1",
                                "train.global_batch_size=8", "train.seq_length=512", "checkpoint.export_hf=false"])
    runtime = initialize(cfg)
    model = model_class("sft")(cfg, runtime, _load_hf_weights)
    seqs = sequences(n)
    real = sum(len(ids) for ids, _ in seqs)
    unpacked = [[[s] for s in seqs[i:i + 8]] for i in range(0, n, 8)]
    packed_rows = pack_sequences(seqs, 512)
    packed = [packed_rows[i:i + 2] for i in range(0, len(packed_rows), 2)]

    def turn(batches) -> tuple[float, int]:
        """(seconds, padded tokens) of one pass."""
        start, padded = time.perf_counter(), 0
        for rows in batches:
            batch = model.collate(rows, 0)
            padded += batch["tokens"].numel()
            model.learn(batch)
        return time.perf_counter() - start, padded

    turn(unpacked[:1])  # warm-up
    ratios, speeds = [], {"unpacked": [], "packed": []}
    for r in range(repeats):
        for name, batches in (("unpacked", unpacked), ("packed", packed)):
            seconds, padded = turn(batches)
            speeds[name].append(real / seconds)
            print(f"turn {r} {name:>8}: {seconds:6.1f} s, {real / seconds:7.0f} real tokens/s, "
                  f"{len(batches)} steps, padding {1 - real / padded:.1%} of {padded} tokens", flush=True)
        ratios.append(speeds["packed"][-1] / speeds["unpacked"][-1])
    shutdown()
    print(f"packed / unpacked real tokens per second: {statistics.mean(ratios):.2f}x "
          f"(per pair: {', '.join(f'{x:.2f}' for x in ratios)}); {len(packed_rows)} packed rows of 512 hold the "
          f"{n} sequences ({real} tokens)")


if __name__ == "__main__":
    main()
