"""Building configured components safely: a config is data, never code.

Every object that diffcli builds from a config - the live one Hydra composed from the command
line and the user's config files, or the one stored inside a checkpoint - is built here, by
:func:`build`, and nowhere else (no ``hydra.utils.instantiate``). The rules:

* a ``_target_`` is accepted only at the places where the shipped config tree has one (the
  config groups in :data:`GROUP_AT`), and only if it is an exact name in that group's
  allowlist (:data:`COMPONENTS`); names are looked up in the registry, never imported from
  the file's text, so ``diffcli.x.os.system`` or ``diffcli.workflows.draw_samples.np.savetxt`` are
  just unknown names;
* Hydra's other special keys (``_args_``, ``_recursive_``, ``_convert_``, ``_partial_``, ...)
  are refused everywhere (``_partial_`` only where :data:`PARTIAL_AT` allows it);
* a stored value may not be an interpolation or a resolver call (``${...}``), and may only be a
  number, a string, a bool, null, a list or a mapping;
* keyword arguments are checked against the component's signature (names and types) before it
  is called.

:func:`check_config` applies the rules to a whole tree (raising :class:`UnsafeConfigError`
with one line); :func:`build` checks one group node and calls the registered component.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffcli.errors import DiffcliError, user_errors

if TYPE_CHECKING:
    from torch import nn

# group -> exact names of the callables its configs may name (every `_target_` under conf/).
COMPONENTS: dict[str, frozenset[str]] = {
    "dataset": frozenset({
        "diffcli.data.registry.make_datamodule",
        "diffcli.data.datamodule.make_datamodule",  # its former path, named by older checkpoints
    }),
    "model": frozenset({"diffcli.nets.unet.UNet", "diffcli.nets.mlp.MLP", "diffcli.nets.dit.DiT",
                        "diffcli.nets.uvit.UViT", "diffcli.nets.classifier.EncoderClassifier",
                        "diffcli.nets.classifier.MLPClassifier"}),
    "autoencoder": frozenset({"diffcli.nets.autoencoder.KLAutoencoder",
                              "diffcli.nets.autoencoder.VQAutoencoder"}),
    "text_encoder": frozenset({"diffcli.nets.text.SmallTextEncoder",
                               "diffcli.nets.text.CLIPTextEncoder"}),
    "schedule": frozenset({
        "diffcli.diffusion.schedules.linear_schedule",
        "diffcli.diffusion.schedules.cosine_schedule",
        "diffcli.diffusion.schedules.sigmoid_schedule",
    }),
    "sampler": frozenset({
        "diffcli.diffusion.samplers.auto.Auto",
        "diffcli.diffusion.samplers.ddpm.DDPM",
        "diffcli.diffusion.samplers.ddim.DDIM",
        "diffcli.diffusion.samplers.dpm_solver.DPMSolverPP2M",
        "diffcli.diffusion.samplers.dpm_solver_3m.DPMSolverPP3M",
        "diffcli.diffusion.samplers.dpm_solver_sde.DPMSolverPP2MSDE",
        "diffcli.diffusion.samplers.euler.Euler",
        "diffcli.diffusion.samplers.heun.Heun",
        "diffcli.diffusion.samplers.restart.Restart",
        "diffcli.diffusion.samplers.unipc.UniPC",
    }),
    "logger": frozenset({
        "diffcli.lit.loggers.make_wandb_logger",
        "diffcli.lit.loggers.RunCSVLogger",
        "lightning.pytorch.loggers.CSVLogger",
        "lightning.pytorch.loggers.TensorBoardLogger",
    }),
    "module": frozenset({"diffcli.lit.module.DiffusionModule",
                         "diffcli.lit.classifier_module.ClassifierModule",
                         "diffcli.lit.autoencoder_module.AutoencoderModule"}),
    "loss": frozenset({"diffcli.lit.objectives.Simple", "diffcli.lit.objectives.Hybrid",
                       "diffcli.lit.objectives.VLB"}),
    "objective": frozenset({"diffcli.diffusion.objectives.discrete.DDPM",
                            "diffcli.diffusion.objectives.edm.EDM",
                            "diffcli.diffusion.objectives.flow.Flow"}),
    "optimizer": frozenset({"torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD"}),
    "lr_scheduler": frozenset({
        "diffcli.lit.schedulers.linear_warmup",
        "diffcli.lit.schedulers.warmup_cosine",
    }),
    "callbacks": frozenset({
        "diffcli.lit.callbacks.last_checkpoint",
        "diffcli.lit.callbacks.snapshots",
        "diffcli.lit.phema.power_ema_snapshots",
        "diffcli.lit.callbacks.EMASampleGrid",
        "diffcli.lit.fid_callback.fid_proxy",
        "diffcli.lit.autoencoder_module.ReconstructionGrid",
    }),
}

# dotted config path -> the group whose `_target_` may stand there (see also group_at).
GROUP_AT: dict[str, str] = {
    "dataset": "dataset",
    "model": "model",
    "autoencoder": "autoencoder",
    "text_encoder": "text_encoder",
    "schedule": "schedule",
    "sampler": "sampler",
    "preview.sampler": "sampler",  # checkpoints written before the callbacks group
    "logger": "logger",
    "module": "module",
    "loss": "loss",
    "objective": "objective",
    "optimizer": "optimizer",
    "lr_scheduler": "lr_scheduler",
}
PARTIAL_AT: frozenset[str] = frozenset({"optimizer", "lr_scheduler"})  # built as partials
# groups rebuilt from a stored config
BUILT_FROM_CHECKPOINT = ("dataset", "model", "schedule", "objective", "autoencoder",
                         "text_encoder")
# null in most runs; no objective: a checkpoint from before objectives (the DDPM chain)
OPTIONAL_GROUPS = frozenset({"autoencoder", "text_encoder", "objective"})
ADVISORY_KEYS: dict[str, frozenset[str]] = {  # keys a group node holds that are not arguments
    "dataset": frozenset({"train_steps"}),
    "model": frozenset({"in_channels", "image_size", "dim"}),  # set from the data (old files)
}


def group_at(path: str) -> str | None:
    """The group whose ``_target_`` may stand at the dotted config ``path``, or None:
    :data:`GROUP_AT`, each entry of ``callbacks`` and the ``sampler`` of a callback."""
    if path in GROUP_AT:
        return GROUP_AT[path]
    parts = path.split(".")
    if parts[0] == "callbacks" and len(parts) == 2:
        return "callbacks"
    if parts[0] == "callbacks" and len(parts) == 3 and parts[2] == "sampler":
        return "sampler"
    return None

PLAIN = (bool, int, float, str, type(None))


class UnsafeConfigError(DiffcliError):
    """A config (stored in a checkpoint, or given by path) that asks for more than data."""


def _refuse(source: str, what: str) -> UnsafeConfigError:
    return UnsafeConfigError(f"{source}: refusing to load: {what}")


def _is_special(key: str) -> bool:
    return len(key) > 2 and key.startswith("_") and key.endswith("_")


def _walk(node: Any, path: str, source: str, stored: bool) -> None:
    where = path or "the config"
    if isinstance(node, Mapping):
        for key, value in node.items():
            if not isinstance(key, str):
                raise _refuse(source, f"{where} has a non-string key {key!r}")
            child = f"{path}.{key}" if path else key
            if key == "_target_":
                group = group_at(path)
                if group is None or not isinstance(value, str) or value not in COMPONENTS[group]:
                    raise _refuse(source, f"{where} names {value!r}, which is not a diffcli "
                                          "component" + (f" for {group}" if group else ""))
            elif key == "_partial_" and path in PARTIAL_AT:
                if not isinstance(value, bool):
                    raise _refuse(source, f"{child} must be true or false")
            elif _is_special(key):
                raise _refuse(source, f"{where} has the key {key}, which a diffcli config may "
                                      "not contain")
            else:
                _walk(value, child, source, stored)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _walk(value, f"{path}[{i}]", source, stored)
    elif isinstance(node, str):
        if stored and "${" in node:
            raise _refuse(source, f"{where} holds the interpolation {node[:80]!r}; a stored "
                                  "config is plain data")
    elif not isinstance(node, PLAIN):
        raise _refuse(source, f"{where} holds a {type(node).__name__}; a config holds only "
                              "numbers, strings, booleans, null, lists and mappings")


def check_config(tree: Any, source: str, *, stored: bool = True) -> None:
    """Raise :class:`UnsafeConfigError` unless ``tree`` (plain dicts and lists) follows the
    rules above. ``stored``: the tree was read from a file, so ``${...}`` is refused too, and
    the groups that are rebuilt from it (:data:`BUILT_FROM_CHECKPOINT`) must name a component
    and fit its signature (a live config is checked after Hydra resolved it, and each group
    when it is built)."""
    if not isinstance(tree, Mapping):
        raise _refuse(source, f"the config is a {type(tree).__name__}, not a mapping")
    _walk(tree, "", source, stored)
    if stored:
        for group in BUILT_FROM_CHECKPOINT:
            node = tree.get(group)
            if node is None and group in OPTIONAL_GROUPS:
                continue
            if not isinstance(node, Mapping) or "_target_" not in node:
                raise _refuse(source, f"its config has no {group} component")
            fn = resolve_target(group, node["_target_"])
            kwargs = {k: v for k, v in node.items()
                      if k != "_target_" and k not in ADVISORY_KEYS.get(group, ())}
            try:
                check_kwargs(fn, kwargs, group)
            except DiffcliError as e:
                raise _refuse(source, str(e)) from None


def conf_dir() -> Path:
    """The shipped config tree, ``diffcli/conf`` (package data of the installed package)."""
    return Path(__file__).resolve().parent / "conf"


def option(group: str, name: str) -> dict[str, Any]:
    """The shipped config of ``group=name`` (e.g. ``option("sampler", "ddim")``), as a plain
    dict; one line listing the options when there is no such one."""
    import yaml

    folder = conf_dir() / group
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise DiffcliError(f"{group}={name!r}: no such option (choose from {known})")
    node = yaml.safe_load(path.read_text())
    return {k: v for k, v in node.items() if k != "defaults"}


def check_group(group: str, node: Any, source: str = "config") -> None:
    """:func:`check_config`'s rules for one group node (e.g. the composed ``sampler``)."""
    _walk(node, "callbacks.entry" if group == "callbacks" else group, source, stored=False)


def resolve_target(group: str, name: str) -> Callable[..., Any]:
    """The callable registered under the exact ``name`` in ``group``."""
    if name not in COMPONENTS.get(group, ()):
        raise UnsafeConfigError(f"{group}: {name!r} is not a diffcli component")
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations of ``fn``'s parameters (a dataclass: its fields, each resolved in
    the module of the class that declares it)."""
    target = fn if dataclasses.is_dataclass(fn) else fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - e.g. a return type imported lazily (a Lightning class)
        pass
    hints: dict[str, Any] = {}  # the parameters one by one; what cannot be resolved is skipped
    namespace = getattr(inspect.unwrap(target), "__globals__", {})
    for name, annotation in getattr(target, "__annotations__", {}).items():
        if name == "return":
            continue
        try:  # our own source's annotation strings (PEP 563), never user input
            hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
        except Exception:  # noqa: BLE001 - unresolvable: plain-value checks only
            continue
    return hints


def fits(value: Any, hint: Any) -> bool:
    """Whether a plain config value can stand for a parameter annotated ``hint``."""
    if hint is Any or hint is inspect.Parameter.empty:
        return isinstance(value, PLAIN) or (isinstance(value, list) and
                                           all(isinstance(v, PLAIN) for v in value))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if inspect.isclass(hint) and issubclass(hint, enum.Enum):
        return value in {m.value for m in hint} or value in hint.__members__
    if inspect.isclass(hint) and issubclass(hint, Path):
        return isinstance(value, str)
    if origin in (list, tuple, Sequence, Iterable, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        inner = args[0] if args else Any
        return all(fits(v, inner) for v in value)
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, Mapping) and all(fits(v, args[1] if args else Any)
                                                  for v in value.values())
    if inspect.isclass(hint):  # e.g. a Tensor: no config value is one
        return isinstance(value, hint)
    return fits(value, Any)  # other typing constructs: plain values only


def check_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], where: str) -> None:
    """Refuse unknown keyword arguments and values whose type the signature does not take."""
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    hints = _hints(fn)
    for key, value in kwargs.items():
        if key not in params:
            if takes_any:
                if not fits(value, Any):
                    raise DiffcliError(f"{where}.{key}: {value!r} is not a plain value")
                continue
            known = ", ".join(k for k, p in params.items() if p.kind is p.KEYWORD_ONLY
                              or p.kind is p.POSITIONAL_OR_KEYWORD)
            raise DiffcliError(f"{where}: unknown key {key!r} (it takes: {known})")
        if not fits(value, hints.get(key, params[key].annotation if not isinstance(
                params[key].annotation, str) else Any)):
            raise DiffcliError(f"{where}.{key}: {value!r} is not a valid value "
                               f"({_describe(hints.get(key))})")


def _describe(hint: Any) -> str:
    if hint is None:
        return "a plain value"
    if inspect.isclass(hint) and issubclass(hint, enum.Enum):
        return "expected one of " + ", ".join(str(m.value) for m in hint)
    if inspect.isclass(hint):
        return f"expected {hint.__name__}"
    return "expected " + str(hint).replace("typing.", "").replace("collections.abc.", "")


def plain(node: Any) -> Any:
    """A config node as plain dicts and lists: an OmegaConf container (what the workflows hold)
    is converted with its interpolations resolved; anything else is returned as it is. No
    Hydra or OmegaConf import here: a container can only come from an already loaded one."""
    omegaconf = sys.modules.get("omegaconf")
    if omegaconf is not None and omegaconf.OmegaConf.is_config(node):
        return omegaconf.OmegaConf.to_container(node, resolve=True)
    return node


def build(group: str, node: Any, *, source: str = "config", where: str | None = None,
          **extra: Any) -> Any:
    """Build the component that the config ``node`` of ``group`` describes.

    ``node`` is a mapping with a ``_target_`` from the group's allowlist and keyword
    arguments (and ``_partial_: true`` for the groups in :data:`PARTIAL_AT`: the result is
    then a ``functools.partial``); ``extra`` adds or replaces keyword arguments (e.g. the data
    shape, or already-built components). The node is checked first (:func:`check_config`'s
    rules, the signature's names and types); a ``ValueError`` or ``TypeError`` raised by the
    component becomes one line naming the group (or ``where``, e.g. "callbacks.last").
    """
    where = where or group
    node = plain(node)
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise DiffcliError(f"{group}: the config names no component (_target_)")
    check_group(group, node, source)
    fn = resolve_target(group, str(node["_target_"]))
    kwargs = {k: v for k, v in node.items() if k not in ("_target_", "_partial_")}
    check_kwargs(fn, kwargs, where)
    kwargs |= extra
    if node.get("_partial_"):
        if group not in PARTIAL_AT:
            raise UnsafeConfigError(f"{source}: refusing to load: {group} may not be partial")
        with user_errors(where):  # fail now on bad keywords, not when it is finally called
            inspect.signature(fn).bind_partial(**kwargs)
        return functools.partial(fn, **kwargs)
    with user_errors(where):
        return fn(**kwargs)


LEGACY_MODEL_KEYS = ("in_channels", "image_size", "dim")  # set from the data, never stored now


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
    unet = str(node.get("_target_", "")).endswith(".UNet")  # DiT / U-ViT: in every block
    if unet and not node.get("transformer_levels") and not node.get("transformer_resolutions") \
            and not node.get("mid_transformer"):
        # the default: cross-attention at the lowest resolution and in the middle block
        node["transformer_levels"] = [len(node.get("channel_mults") or (1, 2)) - 1]
    with user_errors("model"):
        return TextConditionedNet(build("model", node, data_shape=shape), encoder)


def build_autoencoder(autoencoder_cfg: Any, data_shape: Sequence[int]) -> nn.Module:
    """The autoencoder group's network (KL or VQ) for images of ``data_shape`` (C, H, W)."""
    return build("autoencoder", autoencoder_cfg, data_shape=[int(d) for d in data_shape])
