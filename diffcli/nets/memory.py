"""How much memory a network's forward pass takes, found before it is built or run.

The network is built on PyTorch's ``meta`` device (shapes only: no memory, no compute) and one
forward is traced under a dispatch mode that adds up the bytes of every tensor an operation
allocates and subtracts them when the tensor is freed: the peak is what that forward keeps
alive at once (activations, and under autograd what backward will need). What is alive after
each operation is linear in the batch size, so the peak is the largest of such lines, convex
in B: a trace at a small batch and two at batches far larger (free on the meta device) give
``bytes(B) = fixed + B * per_sample``, the per-sample slope where activations dominate and
the line through the small batch's peak with it (never below the peak for larger batches).
Tracing only small batches would miss the slope whenever a batch-independent peak wins there:
the gradients of a large network trained with activation checkpointing (DiT-XL: per-sample 0).
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

META = torch.device("meta")


class _LiveBytes(TorchDispatchMode):
    """Bytes of the tensors alive now (``live``) and at most (``peak``) since entering."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # nothing here is compiled; wrapping would import torch._dynamo (2 s)

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func.overloadpacket is torch.ops.aten.arange and kwargs.get("device") == META:
            # meta's arange is Python code that imports torch._dynamo (2 s): make it on the CPU
            out = func(*args, **{**kwargs, "device": torch.device("cpu")}).to(META)
        else:
            out = func(*args, **kwargs)
        given = {id(t) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, Tensor) or id(t) in given or t._is_view():
                continue  # in place, or a view of memory counted already
            nbytes = t.untyped_storage().nbytes()
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, nbytes)
        return out


@dataclass(frozen=True)
class Footprint:
    """Memory of one forward: ``params`` bytes of weights (and buffers), and the peak of the
    tensors it allocates, ``fixed + per_sample * B`` at batch size B."""

    params: int
    fixed: int
    per_sample: int

    def at(self, batch: int, *, weight_copies: int = 1) -> int:
        """Bytes at batch size ``batch``, with ``weight_copies`` copies of the weights (1 to
        sample; training keeps gradients, Adam's two moments and the EMA: 5)."""
        return weight_copies * self.params + self.fixed + batch * self.per_sample

    def largest_batch(self, free: int, *, weight_copies: int = 1) -> int:
        """The largest batch size whose :meth:`at` fits in ``free`` bytes (0: none)."""
        room = free - weight_copies * self.params - self.fixed
        return max(0, room // max(self.per_sample, 1))


TRACE_BATCHES = (4, 8)  # the small batch whose peak anchors ``fixed``; the least large batch
DOMINATE = 16  # the large batches' input bytes are >= DOMINATE x the small batch's whole peak
MAX_TRACE_BATCH = 2**24  # bounds any batch-sized tensor made on the CPU while tracing (arange)
MARGIN = 1.25  # measured peak RSS / traced peak of a U-Net forward on this CPU: 1.1 to 1.4
SCREEN = 4096  # traced only when SCREEN float32 copies of the batch near half the free memory


def _peak(net: nn.Module, shape: tuple[int, ...], batch: int, grad: bool,
          call: Callable[[nn.Module, Tensor, Tensor], Tensor]) -> int:
    x = torch.empty(batch, *shape, device="meta")
    t = torch.zeros(batch, dtype=torch.long, device="meta")
    tracker = _LiveBytes()
    with torch.inference_mode(not grad), torch.enable_grad() if grad else torch.no_grad():
        with tracker:
            out = call(net, x, t)
            if grad:
                out.float().square().mean().backward()
            del out
    return tracker.peak


def footprint(build: Callable[[], nn.Module], shape: tuple[int, ...], *, grad: bool = False,
              call: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None) -> Footprint:
    """The :class:`Footprint` of ``call(net, x, t)`` (default ``net(x, t)``) for samples of
    ``shape`` (one sample's), with ``net = build()`` built on the meta device; ``grad``: with
    the backward pass of training."""
    with torch.device("meta"):
        net = build()
    call = call or (lambda n, x, t: n(x, t))
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    params += sum(b.numel() * b.element_size() for b in net.buffers())
    small, large = TRACE_BATCHES
    one = _peak(net, shape, small, grad, call)
    # Batches whose inputs alone outweigh every batch-independent peak (weights' gradients):
    # the slope between them is the per-sample cost of the activations, to within 1/DOMINATE
    # of an input's bytes. They cost nothing on the meta device.
    item = 4 * max(math.prod(shape), 1)
    large = min(max(large, 2 ** math.ceil(math.log2(max(DOMINATE * one / item, 1)))),
                MAX_TRACE_BATCH)
    lo, hi = (_peak(net, shape, b, grad, call) for b in (large, 2 * large))
    per = max(hi - lo, 0) // large
    return Footprint(params, max(one - small * per, 0), per)


def free_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: CUDA's free memory, or the host's
    available memory (``MemAvailable``: free pages plus caches the kernel can drop); None when
    unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"; binary units as ``free -h`` prints them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def batch_hint(fp: Footprint, free: int, key: str, *, weight_copies: int = 1,
               rows_per_item: int = 1) -> str:
    """What to do when a batch does not fit: the batch size that would, or why none does."""
    fits = fp.largest_batch(free, weight_copies=weight_copies) // rows_per_item
    if fits >= 1:
        return f"{key}={2 ** int(math.log2(fits))} fits"
    one = fp.at(rows_per_item, weight_copies=weight_copies)
    return f"even {key}=1 needs {human_bytes(one)}: the data shape is too large for this device"


def check_fits(build: Callable[[], nn.Module], shape: tuple[int, ...], batch: int,
               device: torch.device, *, key: str = "batch_size", what: str = "sampling",
               rows_per_item: int = 1, grad: bool = False, weight_copies: int = 1,
               extra_per_item: int = 0) -> None:
    """Refuse in one line, before the network is built, a batch of ``batch`` items of
    ``shape`` whose forward (``rows_per_item`` network rows an item, e.g. 2 for classifier-free
    guidance; with backward when ``grad``) cannot fit in ``device``'s free memory, naming a
    batch size that would. ``extra_per_item``: bytes an item takes besides the network (a
    sampler's state). Traced (:func:`footprint`, x :data:`MARGIN`) only when :data:`SCREEN`
    float32 copies of the batch would take half the free memory: smaller batches always fit."""
    from diffcli.errors import DiffcliError

    free = free_memory(device)
    item = 4 * math.prod(shape)
    if free is None or SCREEN * batch * rows_per_item * item < free // 2:
        return
    traced = footprint(build, shape, grad=grad)
    fp = Footprint(traced.params, int(MARGIN * traced.fixed),
                   int(MARGIN * traced.per_sample) + extra_per_item // rows_per_item)
    need = fp.at(batch * rows_per_item, weight_copies=weight_copies)
    if need <= free:
        return
    size = "x".join(map(str, shape))
    hint = batch_hint(fp, free, key, weight_copies=weight_copies, rows_per_item=rows_per_item)
    raise DiffcliError(
        f"{key}={batch} does not fit in memory: {what} {size} samples {batch} at a time needs "
        f"about {human_bytes(need)} ({human_bytes(fp.per_sample * rows_per_item)} a sample, "
        f"traced before building the network), but {human_bytes(free)} is free on "
        f"{device.type}; {hint}")


__all__ = ["Footprint", "batch_hint", "check_fits", "footprint", "free_memory", "human_bytes"]
