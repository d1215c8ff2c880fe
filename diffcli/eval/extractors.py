"""Feature extractors for FID / IS / KID / precision-recall, through torch-fidelity's registry.

* ``inception-v3-compat`` - torch-fidelity's port of the TensorFlow Inception-v3 that FID
  (Heusel et al. 2017), IS (Salimans et al. 2016) and KID (Binkowski et al. 2018) were defined
  with: uint8 (B, 3, H, W) -> its own TF1-compatible bilinear resize to 299 x 299 -> pool3
  features (B, 2048) and logits (B, 1008). Its weights file
  (:data:`INCEPTION_WEIGHTS_FILE`) is looked for at ``weights=`` or in the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``); it is only
  downloaded when asked (``download=True``), never silently.
* ``standin`` - :class:`StandInExtractor`, a small fixed-seed *random* conv network for tests
  and offline smoke checks. Its numbers are NOT comparable with published FID numbers.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from diffcli.errors import DiffcliError

INCEPTION = "inception-v3-compat"
STANDIN = "standin"
EXTRACTORS: tuple[str, ...] = (INCEPTION, STANDIN)
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = URL_INCEPTION_V3
STANDIN_WARNING = ("extractor=standin is a small fixed-seed random network for tests and offline "
                   "smoke checks: its scores are NOT comparable with published FID/IS/KID numbers")
DOWNLOAD_TIMEOUT_S = 20.0


class WeightsNotFoundError(DiffcliError):
    """The Inception-v3 weights are neither at ``weights=`` nor in the torch hub cache."""


class StandInExtractor(FeatureExtractorBase):
    """A stand-in for Inception-v3: three random 3x3 convolutions (stride 2, ReLU), global
    average pooling and a random linear head, all drawn from a fixed seed, so features are
    deterministic across runs and machines. NOT comparable with published FID numbers.

    Input uint8 (B, 3, H, W); its own resize to 32 x 32 (bilinear, antialiased) is applied to
    every input, real and generated alike. Features: ``"feat"`` (B, 64) for FID / KID /
    precision-recall and ``"logits"`` (B, 10) for IS.
    """

    INPUT_SIZE = 32
    SEED = 20171212
    WIDTHS = (3, 16, 32, 64)
    NUM_CLASSES = 10

    def __init__(self, name: str, features_list: Sequence[str], **kwargs: object) -> None:
        super().__init__(name, list(features_list))
        widths = self.WIDTHS
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1)
                                   for a, b in zip(widths, widths[1:], strict=False))
        self.head = nn.Linear(widths[-1], self.NUM_CLASSES)
        gen = torch.Generator().manual_seed(self.SEED)
        with torch.no_grad():
            for module in [*self.convs, self.head]:
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen)
                                    * (2.0 / fan_in) ** 0.5)
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """uint8 (B, 3, H, W) -> the requested features, in ``features_list`` order."""
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W), got {x.dtype} {tuple(x.shape)}")
        h = F.interpolate(x.float(), size=(self.INPUT_SIZE, self.INPUT_SIZE), mode="bilinear",
                          align_corners=False, antialias=True)
        h = (h - 128.0) / 128.0
        for conv in self.convs:
            h = F.relu(conv(h))
        feat = h.mean(dim=(2, 3))  # (B, 64)
        out = {"feat": feat, "logits": self.head(feat)}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "feat", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        return torch.zeros(1, 3, 4, 4, dtype=torch.uint8)


def register_standin() -> None:
    """Register :class:`StandInExtractor` as ``standin`` in torch-fidelity (idempotent)."""
    if STANDIN not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(STANDIN, StandInExtractor)


def hub_weights_path() -> Path:
    """Where torch hub (and so torch-fidelity) keeps the Inception weights:
    ``$TORCH_HOME/hub/checkpoints/<file>`` (TORCH_HOME defaults to $XDG_CACHE_HOME/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def _how_to_get(hub: Path, key: str = "weights") -> str:
    return f"download {INCEPTION_URL} to {hub} or pass {key}=<path to {INCEPTION_WEIGHTS_FILE}>"


def missing_weights_message(hub: Path | None = None, key: str = "weights") -> str:
    """The one line shown when the Inception weights are missing: what to put where (``key``:
    the setting that takes a path, ``weights`` for eval-fid, ``fid_weights`` for train)."""
    hub = hub or hub_weights_path()
    return f"Inception-v3 weights for FID not found: {_how_to_get(hub, key)}"


def download_weights(dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S, key: str = "weights") -> None:
    """Fetch the Inception weights to ``dest`` (atomically; a socket timeout, never a hang)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(INCEPTION_URL, timeout=timeout) as response, \
                tmp.open("wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
        os.replace(tmp, dest)
    except Exception as e:  # noqa: BLE001 - network, TLS, disk: all the same advice
        tmp.unlink(missing_ok=True)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsNotFoundError(f"could not download the Inception-v3 weights ({reason[:160]}); "
                                   f"{_how_to_get(dest, key)}") from None


def resolve_inception_weights(weights: str | Path | None, download: bool = False,
                              key: str = "weights") -> Path:
    """The Inception weights file: ``weights`` if given, else the torch hub cache copy (fetched
    there first when ``download``). Missing -> :class:`WeightsNotFoundError` (one line)."""
    hub = hub_weights_path()
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{key}={weights}: no such file; {_how_to_get(hub, key)}")
        return path
    if not hub.is_file():
        if not download:
            raise WeightsNotFoundError(missing_weights_message(hub, key))
        download_weights(hub, key=key)
    return hub


def _check_state_dict(path: Path) -> None:
    """Refuse a weights file that is not a plain state dict (read with weights_only=True)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DiffcliError(f"{path} is not a readable Inception-v3 weights file ({reason[:120]}); "
                           f"{_how_to_get(hub_weights_path())}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DiffcliError(f"{path} is not an Inception-v3 state dict; "
                           f"{_how_to_get(hub_weights_path())}")


@dataclass
class Extractor:
    """A ready feature extractor (eval mode, no gradients) and what to record about it.

    ``layers`` maps each metric ("fid", "isc", "kid", "prc") to the feature it uses;
    ``weights`` names the weights file; ``comparable`` is False for the stand-in.
    """

    name: str
    module: FeatureExtractorBase
    layers: dict[str, str]
    weights: str
    comparable: bool

    @property
    def pool_layer(self) -> str:
        """The feature FID, KID and precision/recall share ("2048" for Inception)."""
        return type(self.module).get_default_feature_layer_for_metric("fid")

    def to(self, device: torch.device) -> Extractor:
        self.module.to(device).eval()
        return self


def open_extractor(name: str, metrics: Sequence[str] = ("fid",), weights: str | Path | None = None,
                   download: bool = False, device: torch.device | str = "cpu",
                   key: str = "weights") -> Extractor:
    """Build extractor ``name`` (one of :data:`EXTRACTORS`) for ``metrics``, in eval mode.

    For Inception the weights are located first (:func:`resolve_inception_weights`), so a
    missing file fails at once with one line instead of a download attempt or a hang;
    ``key`` names the setting for the weights path in that line.
    """
    from torch_fidelity.utils import create_feature_extractor

    if name not in EXTRACTORS:
        raise DiffcliError(f"unknown extractor {name!r}; choose one of: {', '.join(EXTRACTORS)}")
    kwargs: dict[str, object] = {"verbose": False}
    if name == INCEPTION:
        path = resolve_inception_weights(weights, download, key)
        _check_state_dict(path)
        kwargs["feature_extractor_weights_path"] = str(path)
        weights_name = path.name
    else:
        register_standin()
        weights_name = f"fixed-seed-{StandInExtractor.SEED}"
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    layers = {m: cls.get_default_feature_layer_for_metric(m) for m in metrics}
    pool = cls.get_default_feature_layer_for_metric("fid")
    wanted = sorted({pool, *layers.values()})
    try:
        module = create_feature_extractor(name, wanted, cuda=False, **kwargs)
    except RuntimeError as e:  # load_state_dict: a file of another network
        raise DiffcliError(f"{kwargs.get('feature_extractor_weights_path')} does not fit "
                           f"torch-fidelity's Inception-v3 ({str(e).splitlines()[0][:120]}); "
                           f"{_how_to_get(hub_weights_path())}") from None
    module.requires_grad_(False).eval()
    return Extractor(name, module, layers, weights_name, name != STANDIN).to(torch.device(device))
