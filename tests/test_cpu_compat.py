"""The CPU compatibility layer (autorlhf_nemo.parallel.cpu_compat)."""

import os
import subprocess
import sys

import pytest
import torch

from autorlhf_nemo.parallel import cpu_compat


@pytest.fixture
def layer():
    cpu_compat.enable()
    yield
    cpu_compat.disable()


def test_cuda_devices_map_to_cpu(layer):
    assert torch.empty(3, device="cuda").device.type == "cpu"
    assert torch.zeros(2, device=torch.cuda.current_device()).device.type == "cpu"
    assert torch.ones(2).to("cuda").device.type == "cpu"
    assert torch.ones(2).cuda().device.type == "cpu"
    assert torch.tensor([1.0], device=torch.device("cuda", 0)).device.type == "cpu"


def test_tensor_type_answers_cuda_names(layer):
    assert torch.ones(1).type() == "torch.cuda.FloatTensor"
    assert torch.ones(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
    # Conversions through .type(dtype) still work.
    assert torch.ones(1).type(torch.float64).dtype == torch.float64


def test_custom_backward_runs_under_the_layer(layer):
    """Megatron's SP linear allocates on torch.cuda.current_device() inside backward."""

    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, grad):
            buffer = torch.empty(grad.shape, device=torch.cuda.current_device())
            buffer.copy_(grad * 2)
            return buffer

    x = torch.ones(3, requires_grad=True)
    Twice.apply(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))


def test_megatron_rng_tracker_forks_a_separate_reproducible_stream(layer):
    from megatron.core.tensor_parallel import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    model_parallel_cuda_manual_seed(123, tp_rank=0, ep_rank=0, etp_rank=0, force_reset_rng=True)
    default_before = torch.get_rng_state()
    with get_cuda_rng_tracker().fork():
        forked = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), default_before)  # default stream untouched
    model_parallel_cuda_manual_seed(123, tp_rank=0, ep_rank=0, etp_rank=0, force_reset_rng=True)
    with get_cuda_rng_tracker().fork():
        again = torch.rand(4)
    assert torch.equal(forked, again)
    model_parallel_cuda_manual_seed(123, tp_rank=1, ep_rank=0, etp_rank=0, force_reset_rng=True)
    with get_cuda_rng_tracker().fork():
        other_tp_rank = torch.rand(4)
    assert not torch.equal(forked, other_tp_rank)


def test_streams_events_and_device_calls_answer_on_the_host(layer):
    """What a CUDA build without a driver refuses ("Found no NVIDIA driver") and a CPU build
    answers "not compiled": megatron-core 0.19's DDP waits on the current stream, partial
    distributed optimizers make their own stream, timers record events."""
    stream = torch.cuda.Stream(device=torch.cuda.current_device())
    torch.cuda.current_stream().wait_stream(stream)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    with torch.cuda.stream(stream), stream:
        total = torch.ones(3, device="cuda").sum()
    stream.record_event(end)
    torch.cuda.current_stream().wait_event(end)
    end.synchronize()
    assert total.item() == 3.0 and end.query() and start.elapsed_time(end) >= 0.0
    torch.cuda.set_device(0)
    with torch.cuda.device(0):
        assert torch.cuda.default_stream() is torch.cuda.current_stream()
    assert not torch.cuda.is_current_stream_capturing()


_DDP_STEP = """
import sys, torch, torch.distributed as dist
from autorlhf_nemo.parallel import cpu_compat
cpu_compat.enable()
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.transformer import TransformerConfig
parallel_state.initialize_model_parallel()
config = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=1, use_cpu_initialization=True)
for overlap in (False, True):
    module = torch.nn.Linear(8, 8, bias=False)
    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(overlap_grad_reduce=overlap), module)
    ddp.zero_grad_buffer()
    ddp(torch.ones(2, 8)).sum().backward()
    ddp.finish_grad_sync()
    assert torch.equal(module.weight.main_grad, torch.full((8, 8), 2.0)), module.weight.main_grad
print("grad sync ok")
"""


def test_megatron_ddp_grad_sync_runs_under_the_layer(tmp_path):
    """A real Megatron DDP backward and gradient sync on gloo (a fresh process: it starts a
    process group). On PyPI's CUDA build without a GPU, megatron-core 0.19's start_grad_sync
    called torch.cuda.current_stream() and died with "Found no NVIDIA driver"."""
    proc = subprocess.run([sys.executable, "-c", _DDP_STEP, str(tmp_path / "store")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "grad sync ok" in proc.stdout


def test_cuda_stays_unavailable_under_the_layer(layer, monkeypatch):
    """Lightning (imported by NeMo) sets PYTORCH_NVML_BASED_CUDA_CHECK=1, after which a CUDA
    build's is_available() counts devices with the layer's device_count(): it said True.
    (On a CPU build is_available() is False anyway: this test bites in make test-py312.)"""
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    assert not torch.cuda.is_available()
    assert not torch.accelerator.is_available()
    assert torch.compile(lambda x: x * 2, backend="eager")(torch.ones(2, device="cuda")).tolist() == [2.0, 2.0]


@pytest.mark.skipif(os.environ.get("AUTORLHF_EXPECT_CUDA_TORCH") != "1",
                    reason="make test-py312 only: its stack installs PyPI's CUDA build of torch")
def test_the_second_stack_runs_a_cuda_build_of_torch_without_a_gpu():
    """What make test-py312 claims to test: a CUDA build (not a +cpu wheel picked up from a local
    wheel folder) on a host where CUDA is unusable, so the layer's driverless paths run."""
    assert torch.version.cuda is not None, torch.__version__
    assert not torch.cuda.is_available()


def test_disable_restores_torch():
    original = torch.cuda.current_device
    original_stream, original_event = torch.cuda.current_stream, torch.cuda.Event
    original_available = torch.cuda.is_available
    cpu_compat.enable()
    assert cpu_compat.is_enabled()
    cpu_compat.disable()
    assert not cpu_compat.is_enabled()
    assert torch.cuda.current_device is original
    assert torch.cuda.current_stream is original_stream and torch.cuda.Event is original_event
    assert torch.cuda.is_available is original_available
    with pytest.raises((RuntimeError, AssertionError)):
        torch.empty(1, device="cuda")


def test_refuses_to_patch_a_cuda_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match="only for CPU-only runs"):
        cpu_compat.enable()
    assert not cpu_compat.is_enabled()


def test_layer_is_only_imported_by_the_runtime():
    """One clearly named place: nothing else in the package touches CUDA patching."""
    out = subprocess.run(["grep", "-rl", "cpu_compat", "autorlhf_nemo"], capture_output=True, text=True,
                         cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    users = sorted(p for p in out.stdout.split() if not p.endswith(".pyc"))
    assert users == ["autorlhf_nemo/parallel/cpu_compat.py", "autorlhf_nemo/parallel/runtime.py"]


def test_suspended_lifts_the_mode_and_restores_it(layer):
    with cpu_compat.suspended():
        with pytest.raises((RuntimeError, AssertionError)):
            torch.empty(1, device="cuda")
        assert torch.ones(2).type() == "torch.FloatTensor"
    assert torch.empty(1, device="cuda").device.type == "cpu"
