"""The device-discipline check (AUTORLHF_VIRTUAL_GPU=1, cpu_compat.VirtualGpuMode): on this
CPU-only machine, tensors carry where they would live on a GPU, and what would fail
there (a host tensor meeting a device tensor, a host tensor handed to NCCL) raises.

The unit tests show the rules catch each kind of mistake; the run below puts the whole
PPO step (generate, score, experience, learn, evaluate, save) and the LM training
step of the randomwalks pretraining through the check.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
import torch
import torch.distributed as dist

from autorlhf_nemo.parallel import cpu_compat
from autorlhf_nemo.parallel.cpu_compat import DeviceMismatchError, on_device
from helpers import cli_command, cli_env


@pytest.fixture
def virtual_gpu():
    cpu_compat.enable(virtual_gpu=True)
    yield
    cpu_compat.disable()


def test_tensors_know_where_they_would_live(virtual_gpu):
    host = torch.arange(4.0)
    device = host.to("cuda")
    assert on_device(host) is False and on_device(device) is True
    assert device is not host and device.device == torch.device("cuda", 0)   # a copy, as on a GPU
    assert on_device(host * 2) is False and on_device(device * 2) is True   # results follow inputs
    assert on_device(torch.zeros(2, device=device.device)) is True
    assert on_device(torch.zeros_like(device)) is True and on_device(device.new_zeros(3)) is True
    back = device.cpu()
    assert on_device(back) is False and on_device(device) is True
    module = torch.nn.Linear(2, 2).to(torch.device("cuda", 0))
    assert all(on_device(p) for p in module.parameters()) and module.weight.is_cuda
    assert on_device(module(torch.ones(1, 2, device="cuda"))) is True


def test_mixing_host_and_device_tensors_raises(virtual_gpu):
    device, host = torch.ones(3, device="cuda"), torch.ones(3)
    with pytest.raises(DeviceMismatchError, match="mixes a tensor that lives on the GPU with a host tensor"):
        device + host
    with pytest.raises(DeviceMismatchError):
        torch.cat([device, host])
    with pytest.raises(DeviceMismatchError):
        torch.stack([device.sum(), host.sum()])          # not elementwise: 0-dim does not help
    # A host batch fed to a model on the device (the bug the check first found here).
    embedding = torch.nn.Embedding(10, 4).to("cuda")
    with pytest.raises(DeviceMismatchError, match="embedding"):
        embedding(torch.tensor([[1, 2]]))
    # What CUDA allows: 0-dim host tensors as scalars, copies, host indices into device tensors.
    assert on_device(device * torch.tensor(2.0)) is True
    device.copy_(host)
    assert on_device(device[torch.tensor([0, 2])]) is True
    with pytest.raises(DeviceMismatchError, match="index tensor on the GPU"):
        host[torch.tensor([0], device="cuda")]
    with pytest.raises(DeviceMismatchError, match="assigning a host tensor"):
        device[torch.tensor([0, 1])] = torch.zeros(2)


def test_generators_draw_for_their_own_side(virtual_gpu):
    generator = torch.Generator(device="cuda").manual_seed(3)
    assert generator.device == torch.device("cuda", 0)
    assert on_device(torch.rand(4, generator=generator, device=generator.device)) is True
    with pytest.raises(DeviceMismatchError, match="host tensor with a GPU generator"):
        torch.rand(4, generator=generator)
    with pytest.raises(DeviceMismatchError, match="GPU tensor with a CPU generator"):
        torch.rand(4, generator=torch.Generator().manual_seed(3), device="cuda")


def test_host_only_operations_refuse_device_tensors(virtual_gpu):
    device = torch.zeros(4, device="cuda")
    assert device.is_cuda and not device.is_cpu
    with pytest.raises(DeviceMismatchError, match="to numpy"):
        device.numpy()
    assert device.cpu().numpy().tolist() == [0.0] * 4
    device[1:3] = torch.ones(2)                 # basic slicing assigns by copy_, as on CUDA
    assert device.tolist() == [0.0, 1.0, 1.0, 0.0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_collectives_take_device_tensors_on_nccl_groups(virtual_gpu):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        with pytest.raises(DeviceMismatchError, match="all_reduce over a group that is NCCL on GPUs"):
            dist.all_reduce(torch.ones(2))                      # the default group is NCCL on GPUs
        with pytest.raises(DeviceMismatchError, match="broadcast"):
            dist.broadcast(torch.ones(2), src=0, group=dist.new_group([0]))
        summed = torch.ones(2, device="cuda")
        dist.all_reduce(summed)
        assert on_device(summed) is True
        dist.all_reduce(torch.ones(2), group=dist.new_group([0], backend="gloo"))   # a host (gloo) group
        holder = [{"any": "object"}]
        dist.broadcast_object_list(holder, src=0)               # object collectives move their own buffers
    finally:
        dist.destroy_process_group()


def test_ppo_and_lm_steps_keep_device_discipline(tmp_path):
    """A 2-rank data-parallel randomwalks run under the check: pretraining (LM steps), the
    frozen trunk cached for the reference and learning, rewards scaled by running moments
    (merged over DP), evaluation, checkpoint saves and the HF export. The layout tests
    (test_layouts.py) and the PPO layout-invariance runs (test_ppo_runs.py) run every other
    layout under the check as well."""
    run_dir = tmp_path / "run"
    overrides = ["algorithm=ppo", "task=randomwalks", "parallel=dp2", "train.micro_batch_size=16",
                 "task.pretrain_steps=2", "train.total_steps=2", "algorithm.num_layers_unfrozen=2",
                 "algorithm.scale_reward=running", "checkpoint.resume=false", "checkpoint.save_every=1",
                 "logging.progress_bar=false", "logging.tensorboard=false", f"run_dir={run_dir}"]
    proc = subprocess.run(cli_command(2, overrides), env=cli_env(virtual_gpu=True), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "device cuda:0 (virtual GPU: device-discipline check)" in proc.stdout   # the check was on
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[1]["rollout/kl"] == 0.0
    assert (run_dir / "checkpoints" / "step_000002" / "COMPLETE").is_file()
    assert os.path.isfile(run_dir / "hf_export" / "config.json")
