"""The command line and the runtime entry under torchrun."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _torchrun_module(nproc, *overrides):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "autorlhf_nemo", *overrides],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_job_reports_each_rank_of_a_tp2_pp2_layout():
    proc = _torchrun_module(4, "parallel=tp2_pp2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "layout: TP2 x PP2 x DP1 on 4 rank(s), backend gloo" in out
    for rank, (tp, pp) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        assert f"rank {rank}: tp={tp} pp={pp} dp=0" in out
    # Unique parameters of one replica equal the unsharded tiny Llama's count:
    # embeddings + output 2*256*64, per layer 4*64*64(q,o)... computed by hand:
    vocab, h, ffn, layers, kv = 256, 64, 128, 4, 32
    per_layer = h * h + 2 * kv * h + h * h + 3 * h * ffn + 2 * h
    assert f"parameters per model replica: {2 * vocab * h + layers * per_layer + h:,}" in out


def test_bad_layout_fails_in_every_rank_before_process_groups():
    proc = _torchrun_module(3, "parallel=tp2")
    assert proc.returncode != 0
    message = "world size 3 is not divisible by parallel.tensor_model_parallel_size"
    assert proc.stderr.count(message) == 3  # each rank says why, none hangs in a collective
    assert "init_process_group" not in proc.stderr
