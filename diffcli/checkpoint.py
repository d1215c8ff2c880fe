"""The checkpoint format, importing neither Lightning nor Hydra: where a checkpoint keeps its
self-description, writing one atomically, reading one safely (``weights_only`` unpickling,
memory-mapped; exported safetensors files and diffusers folders too), validating it (the stored
config through the allowlist of :func:`diffcli.components.check_config`, the data description,
finite weights) and describing it (:class:`LoadedRun`).

Every command reads a checkpoint through :func:`read_checkpoint`, once per process: what a
command's check read is handed to its run."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffcli.components import build, build_datamodule, check_config
from diffcli.diffusion.objectives import DDPM, for_data
from diffcli.diffusion.process import Parameterization
from diffcli.diffusion.schedules import NoiseSchedule
from diffcli.errors import CheckpointError, DiffcliError
from diffcli.files import atomic_write
from diffcli.tasks import TASKS, Task, task_named

CHECKPOINT_KEY = "diffcli"  # where the self-description of a checkpoint lives


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`diffcli.files.atomic_write`: a reader (or a run resumed
    after a SIGKILL or a power cut) sees the previous complete file or the new one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def first_nonfinite(tensors: dict[str, Tensor]) -> str | None:
    """``"<name> holds N NaN/inf values"`` for the first floating tensor with a non-finite
    entry, None when all are finite."""
    for name, t in tensors.items():
        if isinstance(t, Tensor) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return f"{name} holds {bad} NaN/inf value{'s' if bad > 1 else ''}"
    return None




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
    raw: dict[str, Any] | None = field(default=None, repr=False)  # the whole file, as read
    # a command that picked this run itself (no ckpt=): the line saying which and why, said
    # when the command acts (diffcli.runs.NewestRun.line)
    picked: str | None = field(default=None, repr=False)

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
    def kind(self) -> Task:
        """What the run trained, as its :class:`~diffcli.tasks.Task` object."""
        return task_named(self.task)

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
        return dict(node) if isinstance(node, Mapping) and self.kind.takes_text else None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """What the network generates: the latent shape of a latent model, else the data's."""
        return self.latent.shape if self.latent is not None else self.data_info().shape

    @property
    def num_classes(self) -> int | None:
        """The classes of a class-conditional model or a classifier; None when unconditional."""
        labelled = self.kind.labels is not None or bool(self.config.get("conditional", False))
        return self.data.num_classes if labelled and self.data is not None else None

    def objective(self) -> Any:
        """The training objective (:mod:`diffcli.diffusion.objectives`), rebuilt from the stored
        config, with what depends on the data's size filled in; checkpoints from before
        objectives trained the DDPM chain."""
        node = self.config.get("objective")
        if node is None:
            return DDPM()
        return for_data(build("objective", node, source=str(self.path)),
                        tuple(self.data_info().shape))

    @property
    def continuous(self) -> Any:
        """The continuous objective (EDM, flow) the network was trained with; None for the
        DDPM chain."""
        objective = self.objective()
        return objective if objective.continuous else None

    def schedule(self) -> NoiseSchedule:
        """The noise levels samplers step on, rebuilt from the stored config: the training
        schedule of the DDPM chain, a continuous objective's sampling lattice."""
        objective = self.objective()
        if objective.continuous:
            return objective.lattice()
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
    labelled = run.kind.labels is not None or run.config.get("conditional") is True
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
                    _latent_info(meta.get("data"), path), raw=ckpt)
    _check_shape_matches_config(run)
    _check_task(run)
    known = [p.value for p in Parameterization]
    if run.prediction not in known:
        raise CheckpointError(f"{path}: refusing to load: its network predicts "
                              f"{run.prediction!r}, not one of {', '.join(known)}")
    return run


def read_autoencoder(path: str | Path) -> LoadedRun:
    """The autoencoder checkpoint at ``path`` (``diffcli train task=autoencoder``), loaded
    safely; one line when the file is another kind of run."""
    return require_autoencoder(load_checkpoint(path), path)


def require_autoencoder(run: LoadedRun, path: str | Path) -> LoadedRun:
    """``run`` (read from ``path``), unless it is another kind of run (one line saying so)."""
    if not run.kind.encodes:
        raise DiffcliError(f"{path} is a {run.task} checkpoint, not an autoencoder: train one "
                           "with `diffcli train task=autoencoder` and pass its checkpoints/"
                           "last.ckpt")
    return run


class CheckpointReads:
    """The checkpoints one command has read, by resolved path: a command's check reads through
    it and hands it to the command's run, so that each file is read once per process (a resumed
    run's checkpoint serves the resume checks, the latent space and Lightning's restore)."""

    def __init__(self) -> None:
        self._runs: dict[Path, LoadedRun] = {}

    def load(self, path: str | Path) -> LoadedRun:
        """:func:`load_checkpoint` of ``path``, read on the first call only."""
        key = Path(path).resolve()
        if key not in self._runs:
            self._runs[key] = load_checkpoint(path)
        return self._runs[key]

    def autoencoder(self, path: str | Path) -> LoadedRun:
        """:func:`read_autoencoder` of ``path``, read on the first call only."""
        return require_autoencoder(self.load(path), path)
