"""Moving weights between diffcli's layout and another library's (diffusers' ``UNet2DModel``
and ``AutoencoderKL``): a list of correspondences, applied in either direction.

An entry ``(src, dsts, op, factor)`` says that diffcli's tensor ``src`` is the other side's
``dsts``: the same tensor (``op="copy"``), the same tensor without trailing 1x1 dims
(``"squeeze"``: a 1x1 convolution as a Linear), or split in three along dim 0 (``"qkv"``: a
fused query/key/value projection), multiplied by ``factor`` on the way out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

Entry = tuple[str, tuple[str, ...], str, float]


def other_shapes(src_shape: torch.Size, op: str) -> list[torch.Size]:
    """The other side's tensor shape(s) of a diffcli tensor of ``src_shape``."""
    if op == "squeeze":
        return [torch.Size(src_shape[:2])]
    if op == "qkv":
        third = src_shape[0] // 3
        return [torch.Size((third, *src_shape[1:2]))] * 3
    return [src_shape]


def key_mismatch(side: str, what: str, expected: set[str], got: set[str]) -> ValueError:
    """One-line error naming a few missing and unexpected keys."""
    def few(keys: set[str]) -> str:
        listed = sorted(keys)
        more = f" (+{len(listed) - 3} more)" if len(listed) > 3 else ""
        return f"{listed[:3]}{more}"
    return ValueError(f"{side} state dict does not match this {what} layout: missing "
                      f"{few(expected - got)}, unexpected {few(got - expected)}")


def _scaled(tensor: Tensor, factor: float) -> Tensor:
    """``tensor * factor`` as a new contiguous tensor of the same dtype (a copy when 1)."""
    out = tensor.detach().clone(memory_format=torch.contiguous_format)
    return out if factor == 1.0 else out.mul_(factor)


def map_out(state: Mapping[str, Tensor], entries: Sequence[Entry],
            shapes: Mapping[str, torch.Size], what: str) -> dict[str, Tensor]:
    """diffcli weights ``state`` (exactly the keys of ``shapes``) -> the other side's: new,
    contiguous tensors; ValueError (one line) for missing / unexpected keys or shapes."""
    if set(state) != set(shapes):
        raise key_mismatch("diffcli", what, set(shapes), set(state))
    out: dict[str, Tensor] = {}
    for src, dsts, op, factor in entries:
        tensor = state[src]
        if tensor.shape != shapes[src]:
            raise ValueError(f"diffcli weight {src} has shape {tuple(tensor.shape)}, this "
                             f"{what} layout needs {tuple(shapes[src])}")
        pieces = tensor.chunk(3, dim=0) if op == "qkv" else (tensor,)
        for dst, piece, shape in zip(dsts, pieces, other_shapes(tensor.shape, op), strict=True):
            out[dst] = _scaled(piece.reshape(shape), factor)
    return out


def map_in(state: Mapping[str, Tensor], entries: Sequence[Entry],
           shapes: Mapping[str, torch.Size], what: str) -> dict[str, Tensor]:
    """The inverse of :func:`map_out`: the other side's weights -> diffcli's (the factors
    divided out again)."""
    expected = {dst: shape for src, dsts, op, _ in entries
                for dst, shape in zip(dsts, other_shapes(shapes[src], op), strict=True)}
    if set(state) != set(expected):
        raise key_mismatch("diffusers", what, set(expected), set(state))
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise ValueError(f"diffusers weight {key} has shape {tuple(state[key].shape)}, "
                             f"this {what} layout needs {tuple(shape)}")
    out: dict[str, Tensor] = {}
    for src, dsts, _, factor in entries:
        pieces = [state[dst] for dst in dsts]
        tensor = torch.cat(pieces, dim=0) if len(pieces) > 1 else pieces[0]
        out[src] = _scaled(tensor.reshape(shapes[src]), 1.0 / factor)
    return out


__all__ = ["Entry", "key_mismatch", "map_in", "map_out", "other_shapes"]
