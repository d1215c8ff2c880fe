"""A diffcli network as an ONNX file: ``(x_t, t[, y]) -> prediction`` with a dynamic batch axis.

The graph has the inputs ``x_t`` (float32, ``(B, *sample_shape)``), ``t`` (int64 timesteps,
``(B,)``) and, for a class-conditional export, ``y`` (int64 labels, ``(B,)``, ``num_classes``
being the null label of classifier-free guidance), and one output ``prediction``; ``B`` is
the symbolic dimension ``batch`` everywhere. It is what the network's ``forward`` returns
(eps / x0 / v, followed by the variance channels for a ``learn_sigma`` net): the sampler
loop stays outside the graph.

The export goes through ``torch.export`` (``torch.onnx.export(..., dynamo=True)``): the
TorchScript-based exporter is deprecated in this torch. That path needs ONNX opset 18 or
newer (converting its graph down to opset 17 produces invalid ``Split`` nodes), so 18 is
the default and the minimum. :func:`check_onnx` runs the file with onnxruntime beside the
torch network, at a batch size other than the export's, and returns the largest difference.

The ONNX packages are optional (``pip install diffcli[export]``); this module imports them
only when a function needs them.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffcli.errors import DiffcliError, one_line

__all__ = [
    "MIN_OPSET",
    "OnnxUnavailableError",
    "check_onnx",
    "export_onnx",
    "onnx_available",
    "onnx_predict",
]

MIN_OPSET = 18
"""The oldest opset the torch.export-based exporter writes a valid graph for."""

EXPORT_BATCH = 2
"""Batch size of the example inputs traced at export (not 1, which torch.export would fix)."""

MISSING_MESSAGE = (
    "ONNX export needs `pip install diffcli[export]` (onnx, onnxruntime, onnxscript)"
)


class OnnxUnavailableError(DiffcliError, ModuleNotFoundError):
    """onnx, onnxruntime or onnxscript is not installed (the command line shows one line)."""


def onnx_available() -> bool:
    """True when ``onnx``, ``onnxruntime`` and ``onnxscript`` (used by torch's exporter) are
    importable; nothing is imported to find out."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("onnx", "onnxruntime", "onnxscript"))


def _require_onnx() -> None:
    """Raise :class:`OnnxUnavailableError` unless :func:`onnx_available`."""
    if not onnx_available():
        raise OnnxUnavailableError(MISSING_MESSAGE, name="onnx")


def _input_names(num_classes: int | None) -> list[str]:
    return ["x_t", "t"] if num_classes is None else ["x_t", "t", "y"]


def _check_net(net: nn.Module, sample_shape: Sequence[int], num_classes: int | None) -> None:
    """Raise ``ValueError`` for what the export cannot represent (checked before tracing)."""
    if not sample_shape or any(int(s) < 1 for s in sample_shape):
        raise ValueError(f"ONNX export needs a sample shape of positive sizes, "
                         f"got {tuple(sample_shape)}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"ONNX export num_classes must be >= 1 or None, got {num_classes}")
    net_classes = getattr(net, "num_classes", None)
    if num_classes is not None and net_classes != num_classes:
        raise ValueError(f"ONNX export with num_classes={num_classes}, but the "
                         f"{type(net).__name__} was built with num_classes={net_classes}")
    if getattr(net, "context_dim", None) is not None:
        raise ValueError(f"ONNX export of a text-conditioned {type(net).__name__} "
                         "(context_dim set) is not supported: its forward takes a token context")
    dtypes = {p.dtype for p in net.parameters() if p.is_floating_point()}
    if dtypes - {torch.float32}:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        raise ValueError(f"ONNX export takes a float32 network, this one has {names} "
                         "parameters; call net.float() first")


def _net_device(net: nn.Module) -> torch.device:
    param = next(net.parameters(), None)
    return torch.device("cpu") if param is None else param.device


def _random_inputs(sample_shape: Sequence[int], num_classes: int | None, batch: int,
                   device: torch.device, generator: torch.Generator | None = None,
                   num_steps: int = 1000) -> tuple[Tensor, ...]:
    """``(x_t, t[, y])``: Gaussian ``x_t``, timesteps in ``0 .. num_steps - 1`` and labels in
    ``0 .. num_classes`` (the null label included), drawn on the CPU then moved."""
    x_t = torch.randn((batch, *map(int, sample_shape)), generator=generator)
    t = torch.randint(0, num_steps, (batch,), generator=generator)
    inputs = [x_t, t]
    if num_classes is not None:
        inputs.append(torch.randint(0, num_classes + 1, (batch,), generator=generator))
    return tuple(x.to(device) for x in inputs)


def export_onnx(net: nn.Module, sample_shape: tuple[int, ...], path: Path, *,
                num_classes: int | None = None, opset: int = MIN_OPSET) -> Path:
    """Write ``net``'s forward ``(x_t, t[, y]) -> prediction`` to the ONNX file ``path``.

    Every input and the output get the symbolic batch dimension ``batch``. The network is
    traced in eval mode (dropout off) and put back in its previous mode afterwards. The file
    is written to ``<path>.tmp`` and renamed into place, so a failed export leaves any
    previous file untouched.

    Args:
        net: a diffcli network taking ``(x_t, t)`` or, class-conditional, ``(x_t, t, y)``:
            :class:`~diffcli.nets.unet.UNet` (``sample_shape`` ``(C, H, W)``) or
            :class:`~diffcli.nets.mlp.MLP` (``sample_shape`` ``(D,)``, e.g. ``(2,)``).
        sample_shape: one sample's shape (without the batch axis).
        path: the ``.onnx`` file to write; its folder is created.
        num_classes: export the class-conditional forward with the label input ``y``; must
            equal the network's ``num_classes``. ``None``: no ``y`` input (for a
            class-conditional net, that is the unconditional, null-label branch).
        opset: ONNX opset version, at least :data:`MIN_OPSET` (18).

    Returns:
        ``path``.

    Raises:
        OnnxUnavailableError: onnx / onnxruntime / onnxscript is not installed (a
            ``ModuleNotFoundError``).
        ValueError: the arguments do not fit the network, or the network cannot be
            exported (e.g. an operator without an ONNX translation); one line.
    """
    _require_onnx()
    if opset < MIN_OPSET:
        raise ValueError(f"ONNX export needs opset >= {MIN_OPSET} (torch.export-based "
                         f"exporter), got {opset}")
    _check_net(net, sample_shape, num_classes)
    path = Path(path)
    names = _input_names(num_classes)
    example = _random_inputs(sample_shape, num_classes, EXPORT_BATCH, _net_device(net))
    program = _trace(net, sample_shape, example, names, opset)
    _save_program(program, path)
    return path


def _trace(net: nn.Module, sample_shape: Sequence[int], example: tuple[Tensor, ...],
           names: list[str], opset: int) -> Any:
    """``torch.onnx.export`` (dynamo) of ``net`` on ``example``, every input and the output
    with the batch axis ``batch``; ``net`` runs in eval mode and gets its mode back.

    Raises:
        ValueError: one line, for anything the size check, the forward or the exporter raise.
    """
    batch = torch.export.Dim("batch")
    was_training = net.training
    net.eval()
    try:
        if hasattr(net, "check_image_size"):  # a padded size would not match the graph's levels
            net.check_image_size(*sample_shape[-2:])
        with torch.no_grad():  # the network's own checks fail here fast, before tracing
            net(*example)
        with warnings.catch_warnings():
            # The output's batch axis is tied to the inputs', which torch reports at length.
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            program = torch.onnx.export(
                net,
                example,
                input_names=names,
                output_names=["prediction"],
                dynamic_shapes=tuple({0: batch} for _ in names),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
    except Exception as e:  # the exporter's errors have no common base class
        raise ValueError(f"cannot export {type(net).__name__} to ONNX: {one_line(e)}") from e
    finally:
        net.train(was_training)
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ValueError(f"cannot export {type(net).__name__} to ONNX: the exporter "
                         "returned no program")
    return program


def _save_program(program: Any, path: Path) -> None:
    """Write the exported ``program`` to ``<path>.tmp`` and rename it to ``path`` (its folder
    created), so a failed write leaves any previous file untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    try:
        program.save(tmp, external_data=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _session(path: Path) -> Any:
    """An onnxruntime CPU inference session on ``path``."""
    _require_onnx()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), sess_options=options,
                                        providers=["CPUExecutionProvider"])


def onnx_predict(path: Path, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
    """Run the ONNX file ``path`` (written by :func:`export_onnx`) with onnxruntime on the CPU.

    Args:
        path: the ``.onnx`` file.
        x_t: noisy samples ``(B, *sample_shape)`` (sent as float32).
        t: timesteps ``(B,)`` (sent as int64).
        y: class labels ``(B,)`` (int64), exactly when the file has a ``y`` input.

    Returns:
        The ``prediction`` output as a CPU float32 tensor.

    Raises:
        ValueError: ``y`` given to a file without a label input, or missing for one with it.
    """
    session = _session(Path(path))
    wanted = [i.name for i in session.get_inputs()]
    if ("y" in wanted) != (y is not None):
        raise ValueError(f"{path}: the ONNX graph takes inputs {wanted}; "
                         + ("pass class labels y" if y is None else "it takes no labels y"))
    feed = {
        "x_t": x_t.detach().to("cpu", torch.float32).numpy(),
        "t": t.detach().to("cpu", torch.int64).numpy(),
    }
    if y is not None:
        feed["y"] = y.detach().to("cpu", torch.int64).numpy()
    (out,) = session.run(["prediction"], feed)
    return torch.from_numpy(out)


def check_onnx(path: Path, net: nn.Module, sample_shape: tuple[int, ...], *,
               num_classes: int | None = None, batch: int = 3, seed: int = 0) -> float:
    """Largest absolute difference between the ONNX file and ``net`` on random inputs.

    Runs ``path`` with onnxruntime (CPU) and ``net`` (eval mode, no gradients; its mode is
    restored) on the same ``batch`` Gaussian samples, timesteps in 0..999 and, with
    ``num_classes``, labels in ``0 .. num_classes`` (null label included). Choose a
    ``batch`` other than the export's (2) to show that the batch axis is dynamic.

    Raises:
        ValueError: the two outputs differ in shape.
    """
    if batch < 1:
        raise ValueError(f"check_onnx batch must be >= 1, got {batch}")
    generator = torch.Generator().manual_seed(seed)
    inputs = _random_inputs(sample_shape, num_classes, batch, torch.device("cpu"), generator)
    got = onnx_predict(path, *inputs)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            want = net(*(x.to(_net_device(net)) for x in inputs)).float().cpu()
    finally:
        net.train(was_training)
    if got.shape != want.shape:
        raise ValueError(f"{path}: ONNX output shape {tuple(got.shape)} differs from the "
                         f"network's {tuple(want.shape)}")
    return float((got - want).abs().max()) if want.numel() else 0.0
