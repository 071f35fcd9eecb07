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
    message = "world size 3 is not divisible by parallel.tensor_model_parallel_size"
    # Each rank as torchrun starts it (its environment), but without the agent that tears the
    # others down once the first one exits: every rank must say why, exit 2, and never reach
    # a rendezvous (the master address below has nobody listening: a rank that got as far as
    # init_process_group would wait for it until the timeout).
    ranks = [subprocess.Popen([sys.executable, "-m", "autorlhf_nemo", "parallel=tp2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
                                       RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="3",
                                       LOCAL_WORLD_SIZE="3", MASTER_ADDR="127.0.0.1", MASTER_PORT="9"))
             for rank in range(3)]
    for rank, proc in enumerate(ranks):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, (rank, stderr[-2000:])
        assert stderr.count(message) == 1, (rank, stderr[-2000:])
        assert "init_process_group" not in stderr
    # Under torchrun the job fails as a whole (the agent stops the ranks still validating).
    proc = _torchrun_module(3, "parallel=tp2")
    assert proc.returncode != 0
    assert message in proc.stderr and "init_process_group" not in proc.stderr
