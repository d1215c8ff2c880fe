"""LPIPS perceptual distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep
Features as a Perceptual Metric"), VGG16 variant, loaded only from local files.

Distance between images ``x`` and ``y`` (Zhang et al. 2018, eq. 1)::

    d(x, y) = sum_l mean_{h,w} || w_l * (f^l_x - f^l_y) ||^2

where ``f^l`` are the VGG16 activations after relu1_2, relu2_2, relu3_3, relu4_3 and
relu5_3, unit-normalised along channels, and ``w_l`` are learned non-negative per-channel
weights (the 1x1 "linear heads"). Inputs in ``[-1, 1]`` first go through the LPIPS scaling
layer ``(x - shift) / scale``.

State-dict layout of :class:`LPIPS` (and of the two files :func:`load_lpips` reads):

* ``features.N.weight`` / ``features.N.bias``: the convolutions of
  ``torchvision.models.vgg16().features`` with the same indices (0, 2, 5, ..., 28), so a
  torchvision ``vgg16`` state dict fits as it is (``vgg16.pth``; its ``classifier.*`` keys
  are ignored);
* ``lin{i}.model.1.weight`` ``(1, c_i, 1, 1)``, ``c = 64, 128, 256, 512, 512``: the linear
  heads in the official LPIPS v0.1 layout (``lpips_vgg.pth``);
* ``scaling_layer.shift`` / ``scaling_layer.scale`` ``(1, 3, 1, 1)``: fixed constants.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["LPIPS", "LPIPS_FILES", "load_lpips"]

LPIPS_FILES = ("vgg16.pth", "lpips_vgg.pth")

# VGG16 configuration "D" (Simonyan & Zisserman 2015): conv widths, "M" = 2x2 max-pool.
_VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                      512, 512, 512, "M", 512, 512, 512)
# Indices in ``vgg16().features`` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_TAPS = (3, 8, 15, 22, 29)
_TAP_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _vgg16_features() -> nn.Sequential:
    """``torchvision.models.vgg16().features`` up to relu5_3 (indices 0..29), same indices."""
    layers: list[nn.Module] = []
    ch = 3
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers += [nn.Conv2d(ch, int(item), 3, padding=1), nn.ReLU(inplace=False)]
        ch = int(item)
    return nn.Sequential(*layers)


class ScalingLayer(nn.Module):
    """``(x - shift) / scale`` with the LPIPS constants; ``(B, 3, H, W)`` -> same shape."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(_SHIFT)[None, :, None, None])
        self.register_buffer("scale", torch.tensor(_SCALE)[None, :, None, None])

    def forward(self, x: Tensor) -> Tensor:
        """Shift and scale ``x`` ``(B, 3, H, W)`` in ``[-1, 1]``."""
        return (x - self.shift) / self.scale


class LinearHead(nn.Module):
    """The learned per-channel weights ``w_l``: ``Dropout -> Conv1x1(c, 1, bias=False)``,
    kept as ``self.model`` so the weight key is ``model.1.weight`` (official layout)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, c, H, W)`` -> ``(B, 1, H, W)``."""
        return self.model(x)


def _unit_normalise(f: Tensor, eps: float = 1e-10) -> Tensor:
    """Divide features ``(B, c, H, W)`` by their channel-wise L2 norm at each position."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS distance with VGG16 features (Zhang et al. 2018, eq. 1); frozen, always in eval.

    Randomly initialised VGG16 with all head weights 1 (the uncalibrated baseline); use
    :func:`load_lpips` for the trained weights. ``forward(x, y)``
    takes two image batches ``(B, C, H, W)`` in ``[-1, 1]`` with ``C`` 1 or 3 (1-channel
    images are repeated to 3) and returns the distances ``(B,)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.features = _vgg16_features()
        for i, ch in enumerate(_TAP_CHANNELS):
            self.add_module(f"lin{i}", LinearHead(ch))
        for head in self.heads():  # w_l = 1: the unweighted baseline of Zhang et al. (Sec. 3)
            nn.init.ones_(head.model[1].weight)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Stay in eval mode (no dropout in the heads) whatever a parent module asks."""
        return super().train(False)

    def heads(self) -> list[LinearHead]:
        """The five linear heads ``lin0 .. lin4``."""
        return [getattr(self, f"lin{i}") for i in range(len(_TAP_CHANNELS))]

    def taps(self, x: Tensor) -> list[Tensor]:
        """Unit-normalised VGG16 activations of scaled ``x`` ``(B, 3, H, W)`` at the five taps."""
        h = self.scaling_layer(x)
        out = []
        for i, layer in enumerate(self.features[: _TAPS[-1] + 1]):
            h = layer(h)
            if i in _TAPS:
                out.append(_unit_normalise(h))
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS distances ``(B,)`` between ``x`` and ``y`` ``(B, C, H, W)`` in ``[-1, 1]``."""
        x, y = _as_rgb(x, y)
        dist = x.new_zeros(x.shape[0])
        for head, fx, fy in zip(self.heads(), self.taps(x), self.taps(y), strict=True):
            dist = dist + head((fx - fy).pow(2)).mean(dim=(1, 2, 3))
        return dist


def _as_rgb(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Check ``x`` and ``y`` are equal-shape ``(B, 1 or 3, H, W)`` batches; repeat grey to RGB."""
    if x.shape != y.shape or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"LPIPS compares two image batches of one shape (B, 1 or 3, H, W), got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[1] == 1:
        return x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
    return x, y


def _read_state(path: Path) -> dict[str, Tensor]:
    """``torch.load(path, weights_only=True)``, which must give a dict of tensors."""
    if not path.is_file():
        raise ValueError(f"LPIPS weights file {path} is missing; put {path.name} in {path.parent}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is the same user error
        raise ValueError(f"cannot read LPIPS weights file {path} ({type(e).__name__}); "
                         f"replace it with a state dict saved by torch.save") from None
    if not isinstance(state, dict):
        raise ValueError(f"LPIPS weights file {path} holds a {type(state).__name__}, "
                         f"not a state dict; save model.state_dict() instead")
    return state


def _take(state: dict[str, Tensor], wanted: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """The entries of ``state`` named in ``wanted`` with the same shapes (one-line errors)."""
    picked = {}
    for key, ref in wanted.items():
        value = state.get(key)
        if not isinstance(value, Tensor):
            raise ValueError(f"LPIPS weights file {path} has no tensor '{key}'; "
                             f"expected the layout described in diffcli.nets.perceptual")
        if value.shape != ref.shape:
            raise ValueError(f"LPIPS weights file {path}: '{key}' has shape {tuple(value.shape)}, "
                             f"expected {tuple(ref.shape)}")
        picked[key] = value
    return picked


def load_lpips(folder: str | Path) -> LPIPS:
    """LPIPS with the weights of ``folder``/vgg16.pth and ``folder``/lpips_vgg.pth.

    ``vgg16.pth``: a torchvision ``vgg16`` state dict (``features.N.weight/bias``; other
    keys ignored). ``lpips_vgg.pth``: the linear heads, ``lin{i}.model.1.weight`` of shape
    ``(1, c, 1, 1)`` (official LPIPS v0.1). Both are read with ``weights_only=True``.

    Raises:
        ValueError: (one line) the folder or a file is missing or unreadable, or a key is
            missing or of the wrong shape.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"LPIPS weights folder {folder} does not exist; create it with "
                         f"{' and '.join(LPIPS_FILES)}")
    model = LPIPS()
    own = model.state_dict()
    vgg_file, heads_file = (folder / name for name in LPIPS_FILES)
    wanted_vgg = {k: v for k, v in own.items() if k.startswith("features.")}
    wanted_heads = {k: v for k, v in own.items() if k.startswith("lin")}
    own.update(_take(_read_state(vgg_file), wanted_vgg, vgg_file))
    own.update(_take(_read_state(heads_file), wanted_heads, heads_file))
    model.load_state_dict(own)
    return model
