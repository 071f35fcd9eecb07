"""The CPU compatibility layer (autorlhf_nemo.parallel.cpu_compat)."""

import subprocess

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


def test_disable_restores_torch():
    original = torch.cuda.current_device
    cpu_compat.enable()
    assert cpu_compat.is_enabled()
    cpu_compat.disable()
    assert not cpu_compat.is_enabled()
    assert torch.cuda.current_device is original
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
