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
  in gradient clipping and the distributed optimizer;
* streams and events (measured on 0.19.x): DDP's ``start_grad_sync`` asks
  ``torch.cuda.current_stream()`` to wait on CUDA-graph events, partial
  distributed optimizers make a ``torch.cuda.Stream`` and enter
  ``torch.cuda.stream(...)``, and timers record ``torch.cuda.Event`` objects.

Two kinds of torch run here, and they fail differently: a CPU build answers
CUDA calls with ``AssertionError: Torch not compiled with CUDA``; PyPI's CUDA
build on a machine without a GPU driver constructs ``torch.cuda.Event()`` but
raises ``RuntimeError: Found no NVIDIA driver`` from ``current_stream``,
``Stream()``, ``Event.record``, ``current_device``, ``set_device``, ... The layer
replaces those calls with host versions on both builds, so both behave alike.

:func:`enable` installs a :class:`CudaToCpuMode` (a ``TorchFunctionMode``
that rewrites CUDA devices to CPU and answers ``Tensor.type()`` with the CUDA
name) and CPU versions of the CUDA RNG/device functions.  It refuses to run
where CUDA is available: on a GPU nothing here is touched and the same code
runs on NCCL.

``enable(virtual_gpu=True)`` (``AUTORLHF_VIRTUAL_GPU=1``, see ``runtime``) is the
device-discipline check: the runtime's device becomes ``cuda:0``, computed on
the CPU, and every tensor carries where it would live on a GPU. A
:class:`VirtualGpuMode` tags tensors made for ``cuda`` (factories, ``.to``,
``.cuda()``, anything computed from them) and raises :class:`DeviceMismatchError`
where an operation mixes such a tensor with a host tensor, or where a
collective over a group that is NCCL on GPUs (every group not created with
``backend="gloo"``) is handed a host tensor. CUDA's own rules are kept where
they allow mixing: 0-dim host tensors act as scalars, host index tensors may
index device tensors, ``copy_`` and ``.to`` cross. Tensors made by the C++
autograd engine (gradients) carry no tag and are not checked.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import time

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_ACTIVE_MODE: "CudaToCpuMode | None" = None
_SAVED: dict[tuple[object, str], object] = {}

class _HostEvent:
    """``torch.cuda.Event`` on the host. Host work is finished when the call returns, so an
    event is complete once recorded: waiting and synchronizing return at once, and
    ``elapsed_time`` (milliseconds, as CUDA's) is the wall time between two records."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False,
                 external: bool = False):
        self._recorded_at: float | None = None

    def record(self, stream=None) -> None:
        self._recorded_at = time.perf_counter()

    def wait(self, stream=None) -> None:
        pass

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end_event: "_HostEvent") -> float:
        if self._recorded_at is None or end_event._recorded_at is None:
            raise RuntimeError("elapsed_time needs both events recorded")
        return (end_event._recorded_at - self._recorded_at) * 1000.0


class _HostStream:
    """``torch.cuda.Stream`` on the host: one in-order queue that has always drained, so
    waits are no-ops and an event recorded on it is complete."""

    def __init__(self, device=None, priority: int = 0, **kwargs):
        self.device = _CPU
        self.priority = priority

    def __enter__(self) -> "_HostStream":  # ``with stream:`` as with torch.cuda.Stream
        return self

    def __exit__(self, *exc) -> None:
        return None

    @staticmethod
    def priority_range() -> tuple[int, int]:
        return 0, 0

    def wait_event(self, event) -> None:
        pass

    def wait_stream(self, stream) -> None:
        pass

    def record_event(self, event=None) -> _HostEvent:
        event = event if event is not None else _HostEvent()
        event.record(self)
        return event

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass


_HOST_STREAM = _HostStream()


# torch.cuda functions replaced while the layer is active: name -> CPU version.
_CUDA_FUNCS_ON_CPU = {
    # CUDA stays unavailable however it is asked. On a CUDA build torch.cuda.is_available()
    # counts devices with the device_count() below (1) once PYTORCH_NVML_BASED_CUDA_CHECK=1,
    # which importing lightning (NeMo) sets: it said True, Megatron's fused SwiGLU went to
    # torch.compile and dynamo to the driver (torch.accelerator asks is_available too).
    "is_available": lambda: False,
    "current_device": lambda: 0,
    "device_count": lambda: 1,
    "set_device": lambda device: None,
    "device": lambda device=None: contextlib.nullcontext(),  # one device: the host
    "Stream": _HostStream,
    "Event": _HostEvent,
    "current_stream": lambda device=None: _HOST_STREAM,
    "default_stream": lambda device=None: _HOST_STREAM,
    "set_stream": lambda stream: None,
    "stream": lambda stream: contextlib.nullcontext(stream),
    "is_current_stream_capturing": lambda: False,
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
        with type(_ACTIVE_MODE)():
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


def virtual_gpu() -> bool:
    """Whether the device-discipline check (:class:`VirtualGpuMode`) is active."""
    return isinstance(_ACTIVE_MODE, VirtualGpuMode)


def enable(virtual_gpu: bool = False) -> None:
    """Activate the CPU layer for this process (idempotent). Only without CUDA.

    ``virtual_gpu``: also check device discipline (see the module docstring)."""
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
    if virtual_gpu:
        patches.update(_virtual_gpu_patches())
    for (owner, name), cpu_version in patches.items():
        _SAVED[(owner, name)] = getattr(owner, name)
        setattr(owner, name, cpu_version)
    _ACTIVE_MODE = VirtualGpuMode() if virtual_gpu else CudaToCpuMode()
    _ACTIVE_MODE.__enter__()


@contextlib.contextmanager
def suspended():
    """Run a block without the mode's per-operation cost (a Python call per torch
    op). Only for code that never names a CUDA device, e.g. a decode loop that
    allocates on the model's own device. Under the device-discipline check the
    block stays checked."""
    if _ACTIVE_MODE is None or virtual_gpu():
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


# --------------------------------------------------------------------------- virtual GPU
_ON_DEVICE = "_autorlhf_on_device"   # tensor attribute: True (GPU), False (host); absent: unknown
_VIRTUAL_DEVICE = torch.device("cuda", 0)


class DeviceMismatchError(RuntimeError):
    """What would fail on a GPU: a host tensor meets a device tensor, or reaches NCCL."""


def on_device(tensor: torch.Tensor) -> bool | None:
    """Where ``tensor`` would live on a GPU run: True (device), False (host), None (unknown)."""
    return getattr(tensor, _ON_DEVICE, None)


def _mark(out, where):
    if where is None:
        return out
    if isinstance(out, torch.Tensor):
        setattr(out, _ON_DEVICE, where)
    elif isinstance(out, (list, tuple)):
        for item in out:
            if isinstance(item, torch.Tensor):
                setattr(item, _ON_DEVICE, where)
    return out


def _tensor_args(args, kwargs):
    for value in itertools.chain(args, kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, torch.Tensor):
                    yield item


def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"


def _func_name(func) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    return name if "." in name or not getattr(func, "__module__", None) else f"{func.__module__}.{name}"


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A new tensor object for the other side of a host/device crossing (CUDA copies too)."""
    return t.clone()


def _target_device(args, kwargs):
    """The device a ``Tensor.to`` call moves to: a device, or a tensor whose device to take; None."""
    if "device" in kwargs:
        return kwargs["device"]
    for value in args[1:]:
        if isinstance(value, torch.Tensor) or _is_cuda_device(value) or isinstance(value, (torch.device, str)):
            return value
    return None


class VirtualGpuMode(CudaToCpuMode):
    """CudaToCpuMode that tracks where each tensor would live on a GPU and raises
    :class:`DeviceMismatchError` where a GPU run would fail (module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        special = _SPECIAL.get(func)
        if special is not None:
            return special(func, args, kwargs)
        explicit = None
        if "device" in kwargs and kwargs["device"] is not None:
            explicit = _is_cuda_device(kwargs["device"])
            if explicit:
                kwargs = {**kwargs, "device": _CPU}
        generator = kwargs.get("generator")
        if isinstance(generator, _HostGenerator) or isinstance(generator, torch.Generator) and explicit is not None:
            _check_generator(func, generator, explicit, args)
        device_input, host_input, any_tensor = False, None, False
        for t in _tensor_args(args, kwargs):
            any_tensor = True
            where = getattr(t, _ON_DEVICE, None)
            if where:
                device_input = True
            elif where is False and (host_input is None or t.dim() > 0):
                host_input = t
        if device_input and host_input is not None and (host_input.dim() > 0 or func in _SAME_DEVICE) \
                and func not in _MAY_CROSS:
            raise DeviceMismatchError(
                f"{_func_name(func)} mixes a tensor that lives on the GPU with a host tensor "
                f"{_describe(host_input)}: move the host tensor to the device first (.to(device))")
        out = func(*args, **kwargs)
        if args and out is args[0]:  # in place: the tensor stays where it is
            return out
        if explicit is not None:
            where = explicit
        elif device_input:
            where = True
        elif host_input is not None or not any_tensor:
            where = False   # computed on the host, or a factory without a device (CPU by default)
        else:
            where = None
        return _mark(out, where)


def _check_generator(func, generator, explicit, args) -> None:
    """A draw made with a generator of the other side raises on CUDA: a CUDA generator for a
    host tensor, or a CPU generator for a device tensor."""
    generator_on_device = getattr(generator, "for_cuda", False)
    target = explicit if explicit is not None else (on_device(args[0]) if args and
                                                     isinstance(args[0], torch.Tensor) else False)
    if target is not None and bool(target) != generator_on_device:
        raise DeviceMismatchError(
            f"{_func_name(func)} draws for a {'GPU' if target else 'host'} tensor with a "
            f"{'GPU' if generator_on_device else 'CPU'} generator: create the generator on the device "
            f"the tensor lives on (torch.Generator(device=...))")


def _to(func, args, kwargs):
    source, target = args[0], _target_device(args, kwargs)
    if isinstance(target, torch.Tensor):
        to_gpu = on_device(target)   # None (unknown): the result stays where the source is
    elif target is None:
        to_gpu = None
    else:
        to_gpu = _is_cuda_device(target)
    args = tuple(_CPU if _is_cuda_device(a) else a for a in args)
    if "device" in kwargs and _is_cuda_device(kwargs["device"]):
        kwargs = {**kwargs, "device": _CPU}
    out = func(*args, **kwargs)
    if to_gpu is None:  # a dtype change: stays where it was
        return out if out is source else _mark(out, on_device(source))
    if out is source and on_device(source) is not to_gpu:
        out = _copy(source)
    return _mark(out, to_gpu)


def _cuda(func, args, kwargs):
    return _to(torch.Tensor.to, (args[0], _VIRTUAL_DEVICE), {})


def _cpu(func, args, kwargs):
    return _to(torch.Tensor.to, (args[0], _CPU), {})


def _set_data(func, args, kwargs):
    target, value = args
    func(target, value)
    _mark(target, on_device(value))


def _device(func, args, kwargs):
    return _VIRTUAL_DEVICE if on_device(args[0]) else func(*args)


def _is_cuda(func, args, kwargs):
    return bool(on_device(args[0]))


def _is_cpu(func, args, kwargs):
    return not on_device(args[0])


def _to_numpy(func, args, kwargs):
    if on_device(args[0]):
        raise DeviceMismatchError(f"converting a GPU tensor {_describe(args[0])} to numpy: copy it to the host "
                                  "first (.cpu())")
    return func(*args, **kwargs)


def _get_device(func, args, kwargs):
    return 0 if on_device(args[0]) else func(*args)


def _indices_device(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and on_device(i) for i in items)


def _has_index_tensor(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) for i in items)


def _getitem(func, args, kwargs):
    source, index = args
    if on_device(source) is False and _indices_device(index):
        raise DeviceMismatchError(f"indexing a host tensor {_describe(source)} with an index tensor on the "
                                  "GPU: move the index to the host, or the tensor to the device")
    return _mark(func(*args), on_device(source))


def _setitem(func, args, kwargs):
    target, index, value = args
    where = on_device(target)
    if where is False and _indices_device(index):
        raise DeviceMismatchError(f"indexing a host tensor {_describe(target)} with an index tensor on the GPU")
    advanced = _has_index_tensor(index)  # basic slicing assigns by copy_, which crosses devices
    if advanced and isinstance(value, torch.Tensor) and value.dim() > 0 and where is not None \
            and on_device(value) is not None and on_device(value) != where:
        side = "host" if on_device(value) is False else "GPU"
        raise DeviceMismatchError(f"assigning a {side} tensor {_describe(value)} into a "
                                  f"{'GPU' if where else 'host'} tensor {_describe(target)}: "
                                  f"move it with .to(device) first")
    return func(*args)


def _type(func, args, kwargs):
    """``t.type()`` names a CUDA type for device tensors (Megatron filters parameters by it)."""
    if len(args) == 1 and not kwargs and on_device(args[0]):
        return _CUDA_TYPE_NAMES.get(args[0].dtype, func(*args))
    return func(*args, **kwargs)


_SPECIAL = {
    torch.Tensor.to: lambda func, args, kwargs: _to(func, args, kwargs),
    torch.Tensor.cuda: _cuda,
    torch.Tensor.cpu: _cpu,
    torch.Tensor.data.__set__: _set_data,
    torch.Tensor.device.__get__: _device,
    torch.Tensor.is_cuda.__get__: _is_cuda,
    torch.Tensor.is_cpu.__get__: _is_cpu,
    torch.Tensor.numpy: _to_numpy,
    torch.Tensor.__array__: _to_numpy,
    torch.Tensor.get_device: _get_device,
    torch.Tensor.__getitem__: _getitem,
    torch.Tensor.__setitem__: _setitem,
    torch.Tensor.type: _type,
}
# Operations that legitimately take tensors from both sides (as on CUDA).
_MAY_CROSS = {torch.Tensor.copy_}
# Operations that reject even a 0-dim host tensor beside device tensors (not elementwise on CUDA).
_SAME_DEVICE = {torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack, torch.vstack,
                torch.gather, torch.Tensor.gather, torch.scatter, torch.Tensor.scatter, torch.Tensor.scatter_,
                torch.Tensor.scatter_add_, torch.index_select, torch.Tensor.index_select,
                torch.Tensor.index_add_, torch.Tensor.index_copy_, torch.nn.functional.embedding}


# Collectives over a group that is NCCL on GPUs must be handed device tensors. Object
# collectives (broadcast_object_list, ...) move their buffers themselves and are not wrapped;
# isend/irecv stay unwrapped because P2POp compares them by identity (batch_isend_irecv is).
_COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
                "reduce_scatter", "reduce", "gather", "scatter", "all_to_all_single", "send", "recv",
                "_all_gather_base", "_reduce_scatter_base")
_HOST_GROUPS: list = []   # groups created with backend="gloo": host tensors are right there


def _device_group(group) -> bool:
    return not any(group is g for g in _HOST_GROUPS)


def _checked_collective(name: str, collective):
    signature = inspect.signature(collective)

    @functools.wraps(collective)
    def checked(*args, **kwargs):
        group = signature.bind(*args, **kwargs).arguments.get("group")
        if _device_group(group):
            for t in _tensor_args(args, kwargs):
                if on_device(t) is False:
                    raise DeviceMismatchError(
                        f"torch.distributed.{name} over a group that is NCCL on GPUs was handed a host "
                        f"tensor {_describe(t)}: NCCL takes device tensors only; create it on the device")
        return collective(*args, **kwargs)

    return checked


def _checked_batch_p2p(batch_isend_irecv):
    @functools.wraps(batch_isend_irecv)
    def checked(p2p_op_list):
        for op in p2p_op_list:
            if _device_group(op.group) and on_device(op.tensor) is False:
                raise DeviceMismatchError(f"point-to-point {op.op.__name__} of a host tensor "
                                          f"{_describe(op.tensor)} over a group that is NCCL on GPUs")
        return batch_isend_irecv(p2p_op_list)

    return checked


def _recording_new_group(new_group):
    @functools.wraps(new_group)
    def recording(*args, **kwargs):
        group = new_group(*args, **kwargs)
        backend = inspect.signature(new_group).bind(*args, **kwargs).arguments.get("backend")
        if isinstance(backend, str) and backend.lower() == "gloo":
            _HOST_GROUPS.append(group)
        return group

    return recording


class _HostGenerator(torch.Generator):
    """``torch.Generator(device=...)`` on a CPU-only build: a CPU generator that remembers
    whether it was made for the GPU (``for_cuda``; its ``device`` then says ``cuda:0``), so
    that drawing for a tensor of the other side raises as on CUDA."""

    def __new__(cls, device=None):
        generator = super().__new__(cls, device=_CPU)
        generator.for_cuda = device is not None and _is_cuda_device(device)
        return generator

    @property
    def device(self):
        return _VIRTUAL_DEVICE if self.for_cuda else _CPU


def _virtual_gpu_patches() -> dict[tuple[object, str], object]:
    patches = {(dist, name): _checked_collective(name, getattr(dist, name)) for name in _COLLECTIVES}
    patches[(dist, "batch_isend_irecv")] = _checked_batch_p2p(dist.batch_isend_irecv)
    patches[(dist, "new_group")] = _recording_new_group(dist.new_group)
    patches[(torch, "Generator")] = _HostGenerator
    return patches
