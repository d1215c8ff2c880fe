"""Opening a trained run, written once: find the newest checkpoint, load it safely, rebuild the
network, schedule and sampler from the stored config.

Every command that reads a checkpoint (sample, eval-fid, noise-viz, train's resume) goes
through :func:`load_checkpoint` - ``weights_only`` unpickling, the stored config checked as data
(:func:`diffcli.components.check_config`), finite weights - and builds through
:mod:`diffcli.components`. Plain dicts and typed arguments only: no Hydra here.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffcli.checkpoint import CHECKPOINT_KEY, first_nonfinite
from diffcli.components import build, check_config, plain
from diffcli.diffusion.generate import CountingNet
from diffcli.diffusion.process import Parameterization
from diffcli.diffusion.samplers import Denoiser, Sampler
from diffcli.diffusion.schedules import NoiseSchedule
from diffcli.errors import CheckpointError, DiffcliError, user_errors
from diffcli.nets.latent import LatentCodec, file_sha256, load_pretrained_autoencoder

LEGACY_MODEL_KEYS = ("in_channels", "image_size", "dim")  # set from the data, never stored now
TASKS = ("diffusion", "classifier", "autoencoder")  # what `diffcli train task=...` trains


def build_datamodule(dataset_cfg: Any, *, download_ok: bool = False,
                     captions: bool = False) -> Any:
    """Build the dataset group's datamodule (``train_steps`` is advice for the trainer).
    Only ``diffcli train`` passes ``download_ok``: a dataset rebuilt from a checkpoint's config
    never downloads (a stored ``download: true`` would write files where the file says).
    ``captions``: items (x, caption) for text-to-image training."""
    node = {k: v for k, v in plain(dataset_cfg).items() if k != "train_steps"}
    if captions:
        node["captions"] = True
    if not download_ok and "download" in node:
        node["download"] = False
    return build("dataset", node)


def build_net(model_cfg: Any, data_shape: Sequence[int], num_classes: int | None = None,
              text_encoder_cfg: Any = None) -> nn.Module:
    """The network of the model group's config for samples of ``data_shape`` (every diffcli
    network takes ``data_shape``; it refuses data it cannot model, e.g. a U-Net and points),
    class-conditional (or a classifier) over ``num_classes`` labels when given, text-conditional
    (:class:`~diffcli.nets.text.TextConditionedNet`) when ``text_encoder_cfg`` is given."""
    node = {k: v for k, v in plain(model_cfg).items() if k not in LEGACY_MODEL_KEYS}
    if num_classes is not None:
        node["num_classes"] = int(num_classes)
    shape = [int(d) for d in data_shape]
    if not text_encoder_cfg:
        return build("model", node, data_shape=shape)
    from diffcli.nets.text import TextConditionedNet

    encoder = build("text_encoder", text_encoder_cfg)
    node["context_dim"] = int(encoder.width)
    if not node.get("transformer_levels") and not node.get("transformer_resolutions") \
            and not node.get("mid_transformer"):
        # the default: cross-attention at the lowest resolution and in the middle block
        node["transformer_levels"] = [len(node.get("channel_mults") or (1, 2)) - 1]
    with user_errors("model"):
        return TextConditionedNet(build("model", node, data_shape=shape), encoder)


def build_autoencoder(autoencoder_cfg: Any, data_shape: Sequence[int]) -> nn.Module:
    """The autoencoder group's network (KL or VQ) for images of ``data_shape`` (C, H, W)."""
    return build("autoencoder", autoencoder_cfg, data_shape=[int(d) for d in data_shape])


@dataclass(frozen=True)
class DataInfo:
    """What a network needs to know about its data: "image" or "points", and one sample's shape."""

    kind: str
    shape: tuple[int, ...]
    num_classes: int | None = None  # labelled data: the number of classes
    class_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LatentInfo:
    """Where a latent diffusion model's samples live: the scaled latent shape (c, h, w), the
    scale factor s, and the autoencoder (a checkpoint, or a diffusers folder: ``pretrained``)
    with the SHA-256 it had in training."""

    shape: tuple[int, ...]
    scale_factor: float
    source: str
    sha256: str
    pretrained: bool = False

    def describe(self) -> dict[str, Any]:
        """The checkpoint entry (``data.latent``)."""
        return {"shape": list(self.shape), "scale_factor": self.scale_factor,
                "source": self.source, "sha256": self.sha256, "pretrained": self.pretrained}


@dataclass
class LoadedRun:
    """What a diffcli checkpoint holds: its resolved config (plain dicts) and weights."""

    path: Path
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    global_step: int
    data: DataInfo | None = None  # None in checkpoints older than the "data" entry
    latent: LatentInfo | None = None  # latent diffusion: the autoencoder's latent space

    def data_info(self) -> DataInfo:
        """Kind and sample shape, from the checkpoint (or by loading the dataset, for old ones)."""
        if self.data is not None:
            return self.data
        dm = build_datamodule(self.config["dataset"])
        return DataInfo(dm.kind, tuple(dm.data_shape))

    @property
    def prediction(self) -> str:
        """What the network predicts (eps, x0 or v); older checkpoints kept it at the top."""
        module = self.config.get("module")
        if isinstance(module, Mapping) and "prediction" in module:
            return str(module["prediction"])
        return str(self.config.get("prediction", "eps"))

    @property
    def task(self) -> str:
        """"diffusion", "classifier" or "autoencoder" (what ``diffcli train task=...`` trained)."""
        return str(self.config.get("task", "diffusion"))

    @property
    def learned_variance(self) -> bool:
        """Whether the network also outputs its variances (``model.learn_sigma``, Improved
        DDPM)."""
        model = self.config.get("model")
        return bool(model.get("learn_sigma", False)) if isinstance(model, Mapping) else False

    @property
    def text_encoder(self) -> dict[str, Any] | None:
        """The text encoder's config of a text-to-image model (None: not text-conditional)."""
        node = self.config.get("text_encoder")
        return dict(node) if isinstance(node, Mapping) and self.task == "diffusion" else None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """What the network generates: the latent shape of a latent model, else the data's."""
        return self.latent.shape if self.latent is not None else self.data_info().shape

    @property
    def num_classes(self) -> int | None:
        """The classes of a class-conditional model or a classifier; None when unconditional."""
        labelled = self.task == "classifier" or bool(self.config.get("conditional", False))
        return self.data.num_classes if labelled and self.data is not None else None

    def schedule(self) -> NoiseSchedule:
        """The training noise schedule, rebuilt from the stored config."""
        return build("schedule", self.config["schedule"], source=str(self.path))

    def weights(self, prefix: str) -> dict[str, torch.Tensor]:
        """The sub-state-dict under ``prefix`` (e.g. "net." or "ema_net."), prefix stripped."""
        n = len(prefix)
        return {k[n:]: v for k, v in self.state_dict.items() if k.startswith(prefix)}

    def network_weights(self, use_ema: bool) -> tuple[dict[str, torch.Tensor], str]:
        """The EMA weights (when asked and present) or the trained ones, with the prefix they
        came from ("ema_net" or "net")."""
        ema = use_ema and any(k.startswith("ema_net.") for k in self.state_dict)
        prefix = "ema_net" if ema else "net"
        return self.weights(prefix + "."), prefix

    def describe_data(self) -> dict[str, Any]:
        """The checkpoint's ``data`` entry: kind, shape, classes, and the latent space."""
        info = self.data_info()
        out: dict[str, Any] = {"kind": info.kind, "shape": list(info.shape)}
        if info.num_classes is not None:
            out |= {"num_classes": info.num_classes, "class_names": list(info.class_names or ())}
        if self.latent is not None:
            out["latent"] = self.latent.describe()
        return out


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``, memory-mapped when the file allows it; torch's
    own warnings (pickle protocol notes) are not shown: the caller words the outcome."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's top-level dict, read with ``weights_only=True`` (no pickled code runs)
    and memory-mapped (tensors are read from disk only when used). Exported models read the
    same way: ``<name>.safetensors`` with its JSON sidecar, and diffusers folders (a
    ``UNet2DModel`` with its scheduler), mapped to a diffcli config and weights."""
    path = Path(path)
    if path.is_dir():  # an exported diffusers folder, or one from the Hub
        from diffcli.interop.diffusers_io import read_diffusers_folder

        return _with_metadata(read_diffusers_folder(path), path)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file (a device, pipe or socket): not a "
                              "checkpoint" if path.exists() else f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":  # `diffcli export format=safetensors`
        from diffcli.interop.safetensors_io import read_safetensors

        return _with_metadata(read_safetensors(path), path)
    try:
        ckpt = _torch_load(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"{path} is not a diffcli checkpoint (not a PyTorch file that "
                              "loads without running code; --debug shows why)") from e
    return _with_metadata(ckpt, path)


def _with_metadata(ckpt: Any, path: Path) -> dict[str, Any]:
    """``ckpt`` if it has diffcli's self-description and weights, else a one-line error."""
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "config" not in meta or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} was not written by `diffcli train` (no diffcli metadata)")
    return ckpt


def _data_info(data: Any, path: Path) -> DataInfo | None:
    if data is None:
        return None
    ok = (isinstance(data, dict) and data.get("kind") in ("image", "points")
          and isinstance(data.get("shape"), list | tuple) and 1 <= len(data["shape"]) <= 4
          and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 65536
                  for d in data["shape"]))
    if not ok:
        raise CheckpointError(f"{path}: refusing to load: its data description {data!r} is not "
                              "a kind and a shape")
    k, names = data.get("num_classes"), data.get("class_names")
    labelled_ok = k is None or (
        isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 100_000
        and isinstance(names, list | tuple) and len(names) == k
        and all(isinstance(n, str) for n in names))
    if not labelled_ok:
        raise CheckpointError(f"{path}: refusing to load: its class description "
                              f"(num_classes {k!r}) is not a count with one name per class")
    return DataInfo(str(data["kind"]), tuple(int(d) for d in data["shape"]), k,
                    None if k is None else tuple(names))


def _latent_info(data: Any, path: Path) -> LatentInfo | None:
    latent = data.get("latent") if isinstance(data, dict) else None
    if latent is None:
        return None
    ok = (isinstance(latent, dict) and isinstance(latent.get("shape"), list | tuple)
          and len(latent["shape"]) == 3
          and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 65536
                  for d in latent["shape"])
          and isinstance(latent.get("scale_factor"), float | int)
          and not isinstance(latent.get("scale_factor"), bool)
          and 0 < latent["scale_factor"] < 1e6
          and isinstance(latent.get("source"), str) and isinstance(latent.get("sha256"), str)
          and isinstance(latent.get("pretrained", False), bool))
    if not ok:
        raise CheckpointError(f"{path}: refusing to load: its latent description {latent!r} is "
                              "not a shape, scale factor, autoencoder path and hash")
    return LatentInfo(tuple(latent["shape"]), float(latent["scale_factor"]), latent["source"],
                      latent["sha256"], bool(latent.get("pretrained", False)))


def _weights(state: Any, path: Path, check_finite: bool) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: refusing to load: its state_dict is not a mapping of "
                              "names to tensors")
    bad = first_nonfinite(state) if check_finite else None
    if bad is not None:
        raise CheckpointError(f"{path}: refusing to load: {bad} (training diverged); use an "
                              "earlier checkpoint (checkpoints/step-N.ckpt) or retrain with a "
                              "lower optimizer.lr")
    return state


def _check_shape_matches_config(run: LoadedRun) -> None:
    """The stored sample shape must agree with the stored dataset's ``image_size``."""
    dataset = run.config.get("dataset")
    size = dataset.get("image_size") if isinstance(dataset, Mapping) else None
    if run.data is None or run.data.kind != "image" or not isinstance(size, int):
        return
    if tuple(run.data.shape[-2:]) != (size, size):
        raise CheckpointError(f"{run.path}: refusing to load: its images are "
                              f"{'x'.join(map(str, run.data.shape[-2:]))} but its dataset says "
                              f"image_size {size}; the file was edited or is damaged")


def _check_task(run: LoadedRun) -> None:
    """A known task; labelled models (conditional, classifier) carry their classes."""
    if run.task not in TASKS:
        raise CheckpointError(f"{run.path}: refusing to load: unknown task {run.task!r}")
    labelled = run.task == "classifier" or run.config.get("conditional") is True
    if labelled and (run.data is None or run.data.num_classes is None):
        raise CheckpointError(f"{run.path}: refusing to load: a {run.task} model over classes, "
                              "but its data description names no classes")


def load_checkpoint(path: str | Path, *, check_finite: bool = True) -> LoadedRun:
    """Read a diffcli checkpoint safely: ``weights_only`` unpickling, the stored config checked
    as data (:func:`diffcli.components.check_config`: allowlisted ``_target_`` names at the
    group nodes only, no special keys, no interpolations), the data description and weights
    type-checked, and (``check_finite``) every weight finite. Nothing is built here."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    meta = ckpt[CHECKPOINT_KEY]
    check_config(meta["config"], str(path), stored=True)
    info = _data_info(meta.get("data"), path)
    state = _weights(ckpt["state_dict"], path, check_finite)
    step = ckpt.get("global_step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: refusing to load: global_step {step!r} is not a count")
    run = LoadedRun(path, dict(meta["config"]), state, step, info,
                    _latent_info(meta.get("data"), path))
    _check_shape_matches_config(run)
    _check_task(run)
    known = [p.value for p in Parameterization]
    if run.prediction not in known:
        raise CheckpointError(f"{path}: refusing to load: its network predicts "
                              f"{run.prediction!r}, not one of {', '.join(known)}")
    return run


def checkpoint_of(path: str | Path) -> Path:
    """The checkpoint a path names: a run folder's ``checkpoints/last.ckpt``, else the path
    (a .ckpt, an exported .safetensors, a diffusers folder)."""
    path = Path(path).expanduser()
    last = path / "checkpoints" / "last.ckpt"
    return last if path.is_dir() and last.is_file() else path


def run_dir_of(ckpt: Path) -> Path:
    """Where a model's results go (samples/, eval/, viz/): the run folder of
    ``<run>/checkpoints/<name>.ckpt``, the folder of an exported file, or a diffusers folder
    itself."""
    if ckpt.is_dir():
        return ckpt
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def run_task(ckpt: Path) -> str:
    """What the run of ``ckpt`` trained, from its ``.hydra/config.yaml`` (cheap: the checkpoint
    is not opened): "diffusion" or "classifier"; "diffusion" when the file says nothing."""
    import yaml

    try:
        config = yaml.safe_load((ckpt.parent.parent / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return "diffusion"
    return str(config.get("task", "diffusion")) if isinstance(config, dict) else "diffusion"


def find_latest_checkpoint(roots: Sequence[Path], exclude: Path | None = None,
                           task: str = "diffusion", key: str = "ckpt") -> Path:
    """The newest ``checkpoints/last.ckpt`` of a ``task`` run ("diffusion" or "classifier")
    under any of ``roots`` (Hydra run dirs), ignoring any inside the folder ``exclude`` (e.g.
    the run that is asking). ``key`` is the asking command's checkpoint key, for the hint."""
    skip = exclude.resolve() if exclude is not None else None
    found = [p for r in roots if r.is_dir() for p in r.rglob("checkpoints/last.ckpt")
             if skip is None or skip not in p.resolve().parents]
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        if run_task(path) == task:
            return path
    where = " or ".join(str(r) for r in roots)
    what = "trained run" if task == "diffusion" else f"{task} run"
    raise CheckpointError(f"no {what} found under {where}; run `diffcli train"
                          f"{'' if task == 'diffusion' else ' task=' + task}` first or pass "
                          f"{key}=<path to a .ckpt>")


def run_roots(runs_root: str | Path) -> list[Path]:
    """Where trained runs are looked for: ``runs_root`` and Hydra's ``multirun``."""
    return [Path(runs_root), Path("multirun")]


def pick_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DiffcliError(f"device={name} asked for, but no CUDA device is available")
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> None:
    """"32" anywhere, "bf16" on CUDA only (bf16 on CPU is very slow); else one line."""
    if precision not in ("32", "bf16"):
        raise DiffcliError(f"precision={precision!r}: use 32 or bf16")
    if precision == "bf16" and device.type != "cuda":
        raise DiffcliError("precision=bf16 is for CUDA devices; on CPU use precision=32")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA for "bf16"; nothing for "32" (checked by :func:`check_precision`)."""
    check_precision(precision, device)
    if precision == "32":
        yield
        return
    with torch.autocast("cuda", dtype=torch.bfloat16):
        yield


def _load_weights(net: nn.Module, run: LoadedRun, use_ema: bool, what: str = "network") -> str:
    """Load the EMA weights (when asked and present) or the trained ones into ``net``; returns
    the prefix used ("ema_net" or "net")."""
    weights, prefix = run.network_weights(use_ema)
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        raise DiffcliError(f"{run.path}: weights do not fit the configured {what} "
                           f"({str(e).splitlines()[0]})") from None
    return prefix


def restore_net(run: LoadedRun, use_ema: bool,
                device: torch.device) -> tuple[nn.Module, DataInfo, str]:
    """Rebuild the trained network from the checkpoint alone: (net in eval mode on ``device``,
    data info, "ema_net" or "net" - the weights used). A latent model's net is built for its
    latent shape, a text-to-image model's with its text encoder."""
    info = run.data_info()
    net = build_net(run.config["model"], run.sample_shape, num_classes=run.num_classes,
                    text_encoder_cfg=run.text_encoder)
    weights = _load_weights(net, run, use_ema)
    return net.to(device).eval(), info, weights


def read_autoencoder(path: str | Path) -> LoadedRun:
    """The autoencoder checkpoint at ``path`` (``diffcli train task=autoencoder``), loaded
    safely; one line when the file is another kind of run."""
    run = load_checkpoint(path)
    if run.task != "autoencoder":
        raise DiffcliError(f"{path} is a {run.task} checkpoint, not an autoencoder: train one "
                           "with `diffcli train task=autoencoder` and pass its checkpoints/"
                           "last.ckpt")
    return run


def restore_autoencoder(run: LoadedRun, device: torch.device,
                        use_ema: bool = True) -> nn.Module:
    """The trained autoencoder of ``run`` (EMA weights when present), frozen, on ``device``."""
    net = build_autoencoder(run.config["autoencoder"], run.data_info().shape)
    _load_weights(net, run, use_ema, what="autoencoder")
    return net.to(device).eval().requires_grad_(False)


def open_codec(run: LoadedRun, device: torch.device) -> LatentCodec | None:
    """The latent space a latent diffusion ``run`` was trained in (None for pixel models):
    its autoencoder, checked to be the very file it was trained with, and its scale factor."""
    latent = run.latent
    if latent is None:
        return None
    source = Path(latent.source)
    if latent.pretrained:
        try:
            ae, sha = load_pretrained_autoencoder(source, run.data_info().shape)
        except ValueError as e:
            raise DiffcliError(f"{run.path} was trained in the latent space of {source}, which "
                               f"cannot be loaded now: {e}") from None
    else:
        if not source.is_file():
            raise DiffcliError(f"{run.path} was trained in the latent space of the autoencoder "
                               f"{source}, which is missing; put it back at that path")
        sha = file_sha256(source)
    if sha != latent.sha256:
        raise DiffcliError(f"the autoencoder {source} changed since {run.path} was trained on its "
                           f"latents (SHA-256 {sha[:12]}, trained with {latent.sha256[:12]}); "
                           "restore the original file")
    if not latent.pretrained:
        ae = restore_autoencoder(read_autoencoder(source), device)
    return LatentCodec(ae, latent.scale_factor, sample=False).to(device)


def check_sampler_variance(variance: Any, run: LoadedRun) -> None:
    """``sampler.variance=learned`` needs a model that learned its variances."""
    if str(getattr(variance, "value", variance)) == "learned" and not run.learned_variance:
        raise DiffcliError(f"sampler.variance=learned needs a model trained with "
                           f"model.learn_sigma=true; {run.path} has fixed variances: use "
                           "sampler.variance=beta_tilde or beta (or auto)")


def make_sampler(node: Any, schedule: NoiseSchedule, *, steps: int | None = None,
                 clip_denoised: bool | None = None,
                 run: LoadedRun | None = None) -> tuple[Sampler, int]:
    """Build the sampler group's config (``steps`` / ``clip_denoised``, when given, replace the
    node's values: the commands' top-level ``steps=`` is an alias of ``sampler.steps``) and
    check it against ``schedule`` (and ``run``'s network: :func:`check_sampler_variance`);
    returns (sampler, its number of steps)."""
    extra: dict[str, Any] = {}
    if steps is not None:
        extra["steps"] = int(steps)
    if clip_denoised is not None:
        extra["clip_denoised"] = bool(clip_denoised)
    sampler: Sampler = build("sampler", node, **extra)
    if run is not None:
        check_sampler_variance(getattr(sampler, "variance", None), run)
    with user_errors("sampler"):
        n = len(sampler.timesteps(schedule))
    return sampler, n


def sampler_name(choice: str | None, sampler: Sampler) -> str:
    """What to call a sampler in folder names and reports: the config option chosen
    (e.g. "dpmpp_2m"), else its class name in lower case."""
    return str(choice or type(sampler).__name__.lower())


@dataclass
class OpenedRun:
    """A run ready to sample: the network (counted), schedule and denoiser."""

    ckpt: Path
    run: LoadedRun
    info: DataInfo
    weights: str  # "ema_net" or "net"
    counter: CountingNet
    denoiser: Denoiser
    network: nn.Module | None = None  # the network itself (text models: its tokenizer)
    codec: LatentCodec | None = None  # latent models: the autoencoder's latent space

    @property
    def schedule(self) -> NoiseSchedule:
        return self.denoiser.schedule

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """What the sampler draws: latents (c, h, w) of a latent model, else samples."""
        return self.run.sample_shape

    def decode(self, z: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Samples as data: latents decoded by the autoencoder (in batches, on its device;
        (N, C, H, W) float32 on the CPU); pixel samples as they are."""
        return z if self.codec is None else self.codec.decode_batches(z, batch_size)


def require_diffusion(run: LoadedRun) -> LoadedRun:
    """``run``, unless it is a classifier or an autoencoder (one line saying what to do)."""
    if run.task == "autoencoder":
        raise DiffcliError(f"{run.path} is an autoencoder (task=autoencoder), not a diffusion "
                           f"model: train latent diffusion on it with `diffcli train "
                           f"latent={run.path}`")
    if run.task != "diffusion":
        raise DiffcliError(f"{run.path} is a noise-aware classifier (task=classifier), not a "
                           f"diffusion model: sample from a diffusion run and pass this one as "
                           f"classifier={run.path}")
    return run


def check_sampling_fits(run: LoadedRun, batch_size: int, device: torch.device,
                        rows_per_item: int = 1) -> None:
    """One line, before the network is built, when ``batch_size`` samples of ``run`` at once
    cannot fit in ``device``'s memory (the sampler keeps about 8 copies of a batch)."""
    from diffcli.nets.memory import check_fits

    shape = tuple(run.sample_shape)
    check_fits(lambda: build_net(run.config["model"], shape, num_classes=run.num_classes),
               shape, batch_size, device, what=f"sampling {run.path}:",
               rows_per_item=rows_per_item, extra_per_item=8 * 4 * math.prod(shape))


def open_run(ckpt: Path | LoadedRun, *, use_ema: bool, device: torch.device,
             compile: bool = False, batch_size: int | None = None,
             rows_per_item: int = 1) -> OpenedRun:
    """Load ``ckpt`` safely (or take the run already loaded from it) and rebuild its network
    (EMA weights when asked and present), schedule and denoiser, with an NFE counter around the
    network. ``batch_size``: refuse first, in one line, a sampling batch (``rows_per_item``
    network rows a sample) that cannot fit in ``device``'s memory
    (:func:`diffcli.nets.memory.check_fits`)."""
    run = require_diffusion(ckpt if isinstance(ckpt, LoadedRun) else load_checkpoint(ckpt))
    ckpt = run.path
    if batch_size is not None:
        check_sampling_fits(run, batch_size, device, rows_per_item)
    net, info, weights = restore_net(run, use_ema, device)
    codec = open_codec(run, device)
    counter = CountingNet(torch.compile(net) if compile else net)
    return OpenedRun(ckpt, run, info, weights, counter,
                     Denoiser(counter, run.schedule(), run.prediction,
                              learned_variance=run.learned_variance), net, codec)
