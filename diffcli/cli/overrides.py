"""The overrides of a command line, checked before Hydra acts: Hydra's flags apart, short
keys expanded, a ``hydra`` node that would run code refused, the config composed once (sweeps
at their first value), and one line for whatever is wrong (a moved or misspelt key, a value
Hydra's grammar cannot read)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffcli.components import conf_dir

if TYPE_CHECKING:
    from diffcli.commands import Command

CONF_DIR = conf_dir()  # diffcli/conf, shipped inside the package



VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp",
               "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}


HYDRA_FLAGS = VALUE_FLAGS | {"--resolve", "--run", "-r", "--hydra-help", "--shell-completion",
                             "-sc", "--version"}


def group_names(config_name: str) -> dict[str, str]:
    """The config groups a command's defaults list names: override key -> folder under conf/."""
    import yaml

    defaults = yaml.safe_load((CONF_DIR / f"{config_name}.yaml").read_text()).get("defaults", [])
    keys = (next(iter(e)) for e in defaults if isinstance(e, dict))
    return {k.removeprefix("optional "): k.removeprefix("optional ").split("@")[0] for k in keys}


def split_args(args: list[str]) -> list[str]:
    """The override arguments among ``args`` (Hydra flags and their values left out)."""
    overrides, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a.startswith("-"):
            skip = a in VALUE_FLAGS
        else:
            overrides.append(a)
    return overrides


def flags_first(args: list[str]) -> list[str]:
    """``args`` with Hydra's flags (and their values) before every override: Hydra's argument
    parser takes the overrides as one run of positionals, so ``--cfg job`` between two
    overrides (one of them added by diffcli) would leave the later ones unparsed."""
    flags, overrides, value = [], [], False
    for a in args:
        (flags if value or a.startswith("-") else overrides).append(a)
        value = not value and a in VALUE_FLAGS
    return flags + overrides


def expand_aliases(aliases: Mapping[str, str], args: list[str]) -> list[str]:
    """``latent=<path>`` -> ``latent.ckpt=<path>`` (a key that is also a node, given a plain
    value); ``latent=null`` and ``latent={...}`` are left as they are."""
    out = []
    for a in args:
        key, sep, value = a.partition("=")
        if sep and key in aliases and value not in ("null", "") and not value.startswith("{"):
            a = f"{aliases[key]}={value}"
        out.append(a)
    return out


def as_hydra_needs(config_name: str, args: list[str]) -> list[str]:
    """Overrides users write that Hydra would refuse, rewritten: ``+experiment=x`` (a group
    already in the defaults list) -> ``experiment=x``, and ``trainer.X=v`` / ``+trainer.X=v``
    for a Trainer argument that conf/trainer/default.yaml does not list -> ``++trainer.X=v``
    (add or override: every ``lightning.Trainer`` argument is a key, checked by
    :func:`diffcli.workflows.trainer_args.check_trainer_arguments`)."""
    groups = group_names(config_name)
    listed = _trainer_listed() if "trainer" in groups else set()
    out = []
    for a in args:
        key, sep, value = a.partition("=")
        bare = key.lstrip("+")
        if sep and not a.startswith("-") and key.startswith("+") and not key.startswith("++") \
                and bare in groups:
            a = f"{bare}={value}"
        elif sep and bare.startswith("trainer.") and bare.count(".") == 1 and "trainer" in \
                groups and _is_trainer_argument(bare):
            a = f"{bare}={value}" if bare.split(".")[1] in listed else f"++{bare}={value}"
        out.append(a)
    return out


def _trainer_listed() -> set[str]:
    import yaml

    return set(yaml.safe_load((CONF_DIR / "trainer" / "default.yaml").read_text()) or {})


def _is_trainer_argument(key: str) -> bool:
    from diffcli.workflows.trainer_args import trainer_keys

    return key.split(".", 1)[1] in trainer_keys()


def _first_of_sweeps(overrides: list[str]) -> list[str]:
    """Parse overrides with Hydra's grammar; sweeps become their first value, hydra.* dropped
    (but hydra.run.dir, which preflight checks, the launcher's, checked before a sweep, and the
    sweep's folder and callbacks, which end a sweep that stopped early)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    concrete = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        kept = key in ("hydra.run.dir", "hydra/launcher") or key.lstrip("+").startswith(
            ("hydra.launcher.", "hydra.sweep.", "hydra.callbacks."))
        if key.startswith(("hydra.", "hydra/", "+hydra")) and not kept:
            continue
        if o.is_sweep_override():
            concrete.append(f"{key}={next(iter(o.sweep_string_iterator()))}")
        else:
            concrete.append(o.input_line)
    return concrete


def config_dirs(args: list[str]) -> list[str]:
    """The folders given with ``--config-dir`` / ``-cd`` (Hydra adds them to its search path)."""
    dirs = []
    for flag, value in zip(args, args[1:], strict=False):
        if flag in ("--config-dir", "-cd"):
            dirs.append(str(Path(value).expanduser().resolve()))
    dirs += [a.split("=", 1)[1] for a in args if a.startswith("--config-dir=")]
    return dirs


CONFIG_FILE_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def _flag_value(args: list[str], *flags: str) -> str | None:
    """The value of the last ``--flag value`` / ``--flag=value`` among ``args``."""
    found = None
    for i, a in enumerate(args):
        if a in flags and i + 1 < len(args):
            found = args[i + 1]
        elif "=" in a and a.split("=", 1)[0] in flags:
            found = a.split("=", 1)[1]
    return found


def check_hydra_config(config_name: str, args: list[str]) -> None:
    """Refuse, before Hydra acts, a ``hydra`` node that would run code: see
    :func:`diffcli.workflows.hydra_check.check_composed_hydra` (given the config-file flags)."""
    from diffcli.workflows.hydra_check import check_composed_hydra

    path = _flag_value(args, "--config-path", "-cp")
    primary = CONF_DIR if path is None else (Path(__file__).resolve().parent / path).resolve()
    check_composed_hydra(config_name, [o for o in split_args(args) if "=" in o], primary,
                         config_dirs(args), _flag_value(args, "--config-name", "-cn"),
                         files=any(a.split("=", 1)[0] in CONFIG_FILE_FLAGS for a in args))


def check_assignments(overrides: list[str]) -> None:
    """A ValueError for an argument that is no override (``key=value``, ``group=option``)."""
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"bad argument {o!r}: overrides look like key=value or group=option")


def validate(config_name: str, overrides: list[str], config_dirs: list[str] = ()) -> Any:
    """Compose the config once so a bad override fails fast with one line (no traceback);
    returns it (with its ``hydra`` node). Registers diffcli's resolvers first: the config
    interpolates them, and shell completion composes in a process that launches nothing."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from diffcli.cli.resolvers import register_resolvers

    register_resolvers()
    check_assignments(overrides)
    concrete = _first_of_sweeps(overrides)
    if config_dirs:
        concrete.append("hydra.searchpath=[" + ",".join(f"file://{d}" for d in config_dirs) + "]")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=concrete, return_hydra_config=True)
        for key in cfg:  # resolve interpolations too (the logger's need a running Hydra job)
            value = cfg[key]
            if key not in ("logger", "hydra") and OmegaConf.is_config(value):
                OmegaConf.to_container(value, resolve=True)
    return cfg


def user_error(e: BaseException | None, kind: type) -> BaseException | None:
    """The first error of ``kind`` in ``e``'s chain (Hydra wraps errors raised in _target_s)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def worker_message(message: str) -> str:
    """The original message of an error re-raised from a DataLoader worker (which appends the
    worker's traceback): its last line, without the exception's class name."""
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if "Error: " in last else last


def override_message(command: Command, e: BaseException) -> str:
    """One line for a failed composition: where a moved or misspelt key went, else Hydra's."""
    import re

    from diffcli.errors import one_line

    text = str(e)
    missing = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", str(e.__cause__ or ""))
    if missing:
        from diffcli.workflows.schemas import unknown_key_hint

        key = missing.group(1)
        if key.startswith("trainer."):
            from diffcli.workflows.trainer_args import unknown_trainer_argument

            return unknown_trainer_argument(key.split(".", 1)[1])
        names = {*command.keys, *group_names(command.config)}
        return unknown_key_hint(names, command.moved, key) + " (a new key needs a leading +)"
    option = re.search(r"Could not find '([\w/]+)/([^'/]+)'", text)
    if option and (CONF_DIR / option.group(1)).is_dir():
        return unknown_option(option.group(1), option.group(2))
    if any(m in text for m in ("token recognition error", "mismatched input",
                                "LexerNoViableAlt", "no viable alternative")):
        return (f"{one_line(e)} (quote a value with spaces, ~, or non-ASCII characters for "
                "Hydra, e.g. \"key='~/my data'\", or write $HOME instead of ~)")
    return one_line(e)


def unknown_option(group: str, option: str) -> str:
    """"dataset=mnst is not an option of dataset (did you mean mnist?): celeba | ... | moons"."""
    from diffcli.workflows.schemas import nearest

    options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    return (f"{group}={option} is not an option of {group}{nearest(option, options)}; "
            f"choose one of: {' | '.join(options)}")


def unknown_flag(args: list[str]) -> str | None:
    """The first ``--option`` that neither diffcli nor Hydra knows, if any."""
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a.startswith("-") and a not in ("-m", "--multirun"):
            flag = a.split("=", 1)[0]
            if flag not in HYDRA_FLAGS:
                return a
            skip = a in VALUE_FLAGS
    return None
