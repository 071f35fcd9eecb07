"""The one place where Megatron-core is adapted to run without CUDA.

Megatron-core assumes a GPU in a handful of places (measured on 0.16.x):

* ``torch.cuda.current_device()`` used as a device, and tensors created with
  ``device="cuda"`` (p2p shape exchange, pipeline token counters, buffers);
* the CUDA RNG tracker (``model_parallel_cuda_manual_seed`` and
  ``get_cuda_rng_tracker().fork()``) reads and writes CUDA generator state;
* ``torch.cuda.synchronize()``;
* custom autograd Functions allocate on the CUDA device in ``backward``, where
  the autograd engine runs without Python's mode stack;
* ``isinstance``-free type checks such as ``param.type() == "torch.cuda.FloatTensor"``
  in gradient clipping and the distributed optimizer.

:func:`enable` installs a :class:`CudaToCpuMode` (a ``TorchFunctionMode``
that rewrites CUDA devices to CPU and answers ``Tensor.type()`` with the CUDA
name) and CPU versions of the CUDA RNG/device functions.  It refuses to run
where CUDA is available: on a GPU nothing here is touched and the same code
runs on NCCL.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_ACTIVE_MODE: "CudaToCpuMode | None" = None
_SAVED: dict[tuple[object, str], object] = {}

# torch.cuda functions replaced while the layer is active: name -> CPU version.
_CUDA_FUNCS_ON_CPU = {
    "current_device": lambda: 0,
    "device_count": lambda: 1,
    "synchronize": lambda device=None: None,
    "get_rng_state": lambda device="cuda": torch.get_rng_state(),
    "set_rng_state": lambda new_state, device="cuda": torch.set_rng_state(new_state),
    # The "CUDA" generator is the CPU default generator. torch.manual_seed itself
    # calls torch.cuda.manual_seed_all, so these must not call back into it.
    "manual_seed": lambda seed: torch.default_generator.manual_seed(seed),
    "manual_seed_all": lambda seed: None,
    "empty_cache": lambda: None,
    "memory_allocated": lambda device=None: 0,
    "max_memory_allocated": lambda device=None: 0,
}


def _megatron_rng_patches() -> dict[tuple[object, str], object]:
    """Megatron's RNG tracker reads/writes CUDA generator state via private helpers."""
    from megatron.core.tensor_parallel import random as mrandom

    def get_state(device="cuda", clone=False, graph_safe=False):
        return torch.get_rng_state()

    def set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    return {
        (mrandom, "_get_cuda_rng_state"): get_state,
        (mrandom, "_set_cuda_rng_state"): set_state,
        (torch.cuda.random, "get_rng_state"): _CUDA_FUNCS_ON_CPU["get_rng_state"],
        (torch.cuda.random, "set_rng_state"): _CUDA_FUNCS_ON_CPU["set_rng_state"],
    }


def _backward_under_mode(original_apply):
    """Custom autograd Functions' backward runs without the Python mode stack
    (the autograd engine does not carry it), yet Megatron allocates buffers
    with ``device=torch.cuda.current_device()`` there (sequence-parallel
    reduce-scatter). Re-enter the mode around every custom backward."""

    def apply(self, *args):
        if torch.overrides._get_current_function_mode_stack():
            return original_apply(self, *args)
        with CudaToCpuMode():
            return original_apply(self, *args)

    return apply


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # Megatron passes torch.cuda.current_device() (an int) as a device.
    return isinstance(device, int) and not isinstance(device, bool)


_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}


class CudaToCpuMode(TorchFunctionMode):
    """Maps every CUDA device argument to CPU; ``t.cuda()`` returns ``t``.

    ``Tensor.type()`` (no argument) answers with the CUDA type name, because
    Megatron's grad clipping and distributed optimizer filter parameters by it.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not kwargs and func not in _NEEDS_CARE:  # the common case: nothing to rewrite
            return func(*args)
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and "dtype" not in kwargs:
            return _CUDA_TYPE_NAMES.get(args[0].dtype, func(*args, **kwargs))
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = _CPU
        if func is torch.Tensor.to:
            args = tuple(_CPU if _is_cuda_device(a) else a for a in args)
        return func(*args, **kwargs)


_NEEDS_CARE = {torch.Tensor.cuda, torch.Tensor.type, torch.Tensor.to}


def is_enabled() -> bool:
    return _ACTIVE_MODE is not None


def enable() -> None:
    """Activate the CPU layer for this process (idempotent). Only without CUDA."""
    global _ACTIVE_MODE
    if _ACTIVE_MODE is not None:
        return
    if torch.cuda.is_available():
        raise RuntimeError(
            "cpu_compat.enable() called on a machine with CUDA: the CPU layer is only for "
            "CPU-only runs; on GPUs Megatron-core runs unpatched."
        )
    patches = {(torch.cuda, name): fn for name, fn in _CUDA_FUNCS_ON_CPU.items()}
    patches.update(_megatron_rng_patches())
    backward_node = torch.autograd.function.BackwardCFunction
    patches[(backward_node, "apply")] = _backward_under_mode(backward_node.apply)
    for (owner, name), cpu_version in patches.items():
        _SAVED[(owner, name)] = getattr(owner, name)
        setattr(owner, name, cpu_version)
    _ACTIVE_MODE = CudaToCpuMode()
    _ACTIVE_MODE.__enter__()


@contextlib.contextmanager
def suspended():
    """Run a block without the mode's per-operation cost (a Python call per torch
    op). Only for code that never names a CUDA device, e.g. a decode loop that
    allocates on the model's own device."""
    if _ACTIVE_MODE is None:
        yield
        return
    with torch.overrides._pop_mode_temporarily():
        yield


def disable() -> None:
    """Undo :func:`enable` (used by tests)."""
    global _ACTIVE_MODE
    if _ACTIVE_MODE is None:
        return
    _ACTIVE_MODE.__exit__(None, None, None)
    _ACTIVE_MODE = None
    for (owner, name), original in _SAVED.items():
        setattr(owner, name, original)
    _SAVED.clear()
