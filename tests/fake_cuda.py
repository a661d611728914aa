"""A stand-in accelerator on a CPU-only torch: placement checks without a GPU.

``torch._subclasses.FakeTensorMode`` can make fake ``cuda`` tensors on a CPU build, but Python
indexing (``x[0]``, ``x[:, 1:]``) needs CUDA's device guard and fails, data-dependent ops
(``.tolist()``, ``.nonzero()``) raise, and autograd aborts the process: no model forward, let
alone a training step, runs. Here instead:

* :class:`Accelerated` wraps a real CPU tensor and reports ``ACCELERATOR`` (``meta``, which has a
  device guard on every build) as its device, so code that asks ``x.device`` and creates tensors
  there (``torch.arange(n, device=x.device)``) stays on the accelerator;
* :class:`accelerator_mode` (a ``TorchDispatchMode``) runs every op on the wrapped CPU data and
  raises :class:`DeviceMismatch` when one op mixes accelerator tensors with CPU tensors (0-dim CPU
  tensors excepted, as CUDA allows), exactly where a GPU run would fail with "Expected all tensors
  to be on the same device"; ``.to(ACCELERATOR)`` and factories given ``device=ACCELERATOR``
  make accelerator tensors, ``.cpu()`` / ``.item()`` / ``.tolist()`` come back to the host.

So forward, backward and optimizer steps compute real numbers while every tensor that reaches a
model is checked for its device. :func:`to_accelerator` moves a module's parameters and buffers.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

ACCELERATOR = torch.device("meta")
_ALLOWED_MIXED = {  # cross-device by design: copies between host and device
    torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype_layout,
    torch.ops.aten.to.device, torch.ops.aten.to.dtype, torch.ops.aten.to.other,
}
# CUDA indexing accepts index tensors on the CPU (x[[0, 2]] on a GPU tensor works)
_CPU_INDICES = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
                torch.ops.aten._index_put_impl_.default}


class DeviceMismatch(RuntimeError):
    """A CPU tensor met accelerator tensors in one op (a GPU run fails there)."""


class Accelerated(torch.Tensor):
    """A CPU tensor reporting :data:`ACCELERATOR` as its device."""

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(),
                                                   storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                   device=ACCELERATOR, requires_grad=elem.requires_grad)

    def __init__(self, elem: torch.Tensor):
        self.elem = elem

    def __repr__(self):
        return f"Accelerated({self.elem!r})"

    def tolist(self):  # a device-to-host copy, as on a GPU (torch refuses tolist on subclasses)
        return self.elem.tolist()

    # Python indexing turns a list index into a tensor made directly on the indexed tensor's device,
    # below the dispatcher, so on "meta" its values would be lost: make it a CPU index tensor instead
    # (CUDA indexing takes those too)
    def __getitem__(self, index):
        return super().__getitem__(_host_index(index))

    def __setitem__(self, index, value):
        return super().__setitem__(_host_index(index), value)

    def __tensor_flatten__(self):
        return ["elem"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return Accelerated(inner["elem"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _host_index(index):
    if isinstance(index, tuple):
        return tuple(_host_index(i) for i in index)
    return torch.tensor(index) if isinstance(index, list) else index


def _is_accelerator(device) -> bool:
    return isinstance(device, (torch.device, str)) and torch.device(device).type == ACCELERATOR.type


def _wrap(value):
    return Accelerated(value) if isinstance(value, torch.Tensor) and not isinstance(value, Accelerated) else value


def _run(func, args, kwargs):
    flat, _ = tree_flatten((args, kwargs))
    if any(type(t) is torch.Tensor and t.device == ACCELERATOR for t in flat):  # noqa: E721 (not a subclass)
        raise RuntimeError(f"{func}: a tensor made on {ACCELERATOR} below the dispatcher has no values; "
                           "teach tests/fake_cuda.py to make it an Accelerated tensor")
    on_device = any(isinstance(t, Accelerated) for t in flat)
    if on_device and func not in _ALLOWED_MIXED:
        if func in _CPU_INDICES:
            flat, _ = tree_flatten((args[0], args[2:], kwargs))
        host = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, Accelerated) and t.dim() > 0]
        if host:
            raise DeviceMismatch(f"{func}: a cpu tensor of shape {tuple(host[0].shape)} met tensors on the "
                                 "accelerator (a GPU run fails here: expected all tensors on the same device)")
    # the target device, given as a keyword (factories, _to_copy) or positionally (aten.to.device)
    devices = [d for d in tree_flatten((args, kwargs))[0] if isinstance(d, torch.device)]
    to_device = any(_is_accelerator(d) for d in devices)
    to_host = any(d.type == "cpu" for d in devices)
    if to_device:
        args, kwargs = tree_map(lambda d: torch.device("cpu") if _is_accelerator(d) else d, (args, kwargs))
    unwrapped_args = tree_map(lambda t: t.elem if isinstance(t, Accelerated) else t, args)
    unwrapped_kwargs = tree_map(lambda t: t.elem if isinstance(t, Accelerated) else t, kwargs)
    out = func(*unwrapped_args, **unwrapped_kwargs)
    if func is torch.ops.aten.copy_.default and isinstance(args[0], Accelerated):
        return args[0]  # in place: the destination keeps its device
    stays = to_device or (on_device and not to_host)
    return tree_map(_wrap, out) if stays else out


class accelerator_mode(TorchDispatchMode):
    """Inside: :data:`ACCELERATOR` tensors compute on the CPU and mixing them with CPU tensors raises."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        if any(isinstance(t, Accelerated) or (isinstance(t, torch.device) and _is_accelerator(t)) for t in flat):
            return _run(func, args, kwargs)
        return func(*args, **kwargs)


def to_accelerator(module: nn.Module) -> nn.Module:
    """Every parameter and buffer of ``module`` moved to :data:`ACCELERATOR` (values kept, ties kept)."""
    moved: dict[int, torch.Tensor] = {}
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                if id(p) not in moved:
                    moved[id(p)] = nn.Parameter(Accelerated(p.detach()), requires_grad=p.requires_grad)
                sub._parameters[name] = moved[id(p)]
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = Accelerated(b)
    return module


def on_accelerator(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == ACCELERATOR.type


def _factory(make):
    """``torch.tensor`` / ``torch.as_tensor`` build their result below the dispatcher: wrap them."""

    def build(data, *args, device=None, **kwargs):
        if _is_accelerator(device):
            if isinstance(data, Accelerated):
                data = data.elem
            return Accelerated(make(data, *args, **kwargs))
        return make(data, *args, device=device, **kwargs)

    return build


@contextmanager
def accelerator():
    """The mode, entered (and ``torch.tensor`` taught the device); yields :data:`ACCELERATOR`."""
    saved = torch.tensor, torch.as_tensor, threading.Thread.run
    torch.tensor, torch.as_tensor = _factory(torch.tensor), _factory(torch.as_tensor)
    run = threading.Thread.run

    def run_in_mode(thread):  # dispatch modes are per thread: streamed chat generates in a worker
        with accelerator_mode():
            run(thread)

    threading.Thread.run = run_in_mode
    try:
        with accelerator_mode():
            yield ACCELERATOR
    finally:
        torch.tensor, torch.as_tensor, threading.Thread.run = saved
