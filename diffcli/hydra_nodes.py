"""Hydra's own config nodes are data too.

Hydra builds objects from its ``hydra`` node before and around a job: the launcher and sweeper
(``hydra.launcher`` / ``hydra.sweeper``, whose arguments it instantiates recursively), the
callbacks (``hydra.callbacks.<name>``) and Python logging's ``dictConfig`` of
``hydra.job_logging`` / ``hydra.hydra_logging``, which calls any ``()`` factory and imports any
``class`` and ``ext://`` name. A config file travels between people like a checkpoint does, so
before Hydra acts, :func:`check_hydra_node` refuses (one line) every factory that is not on the
allowlist below: Hydra's stock plugins and logging classes, and diffcli's own launchers and
callback. It also refuses environment variables that make a child process load code
(``hydra.job.env_set.LD_PRELOAD=...``) and log files opened for truncation (``mode: w``).

Pure functions on plain mappings (``OmegaConf.to_container`` of the composed ``hydra`` node).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from diffcli.components import UnsafeConfigError

LAUNCHERS = frozenset({
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.diffcli_launchers.SlurmLauncher",
    "hydra_plugins.diffcli_launchers.LocalLauncher",
})
SWEEPERS = frozenset({"hydra._internal.core_plugins.basic_sweeper.BasicSweeper"})
CALLBACKS = frozenset({"diffcli.workflows.sweep_summary.SweepSummaryCallback"})
LOGGING_CLASSES = frozenset({
    "logging.StreamHandler", "logging.FileHandler", "logging.NullHandler",
    "logging.Formatter", "logging.Filter", "colorlog.ColoredFormatter",
})
STREAMS = frozenset({"ext://sys.stdout", "ext://sys.stderr"})
LOGGING_PARTS = ("handlers", "formatters", "filters")
FACTORY_KEYS = ("_target_", "()", "class")
# a child process (DDP ranks, torchrun, submitit jobs) started with these runs other code
CODE_ENV = ("LD_", "DYLD_", "PYTHON", "BASH_ENV", "ENV", "PATH", "PERL5OPT", "NODE_OPTIONS")


def _walk(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """Every ``(path, key, value)`` of a factory key (``_target_``, ``()``, ``class``) below
    ``node``, and every string value (key ``""``)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}"
            if key in FACTORY_KEYS:
                yield path, str(key), value
            else:
                yield from _walk(value, where)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, "", node


def _allowed(path: str, key: str, value: Any) -> bool:
    """Whether the factory ``key: value`` may stand at ``path`` (a dotted path in ``hydra``)."""
    parts = path.split(".")
    if key == "_target_" and path == "hydra.launcher":
        return value in LAUNCHERS
    if key == "_target_" and path == "hydra.sweeper":
        return value in SWEEPERS
    if key == "_target_" and len(parts) == 3 and parts[1] == "callbacks":
        return value in CALLBACKS
    logging_item = (len(parts) == 4 and parts[1] in ("job_logging", "hydra_logging")
                    and parts[2] in LOGGING_PARTS)
    return key in ("()", "class") and logging_item and value in LOGGING_CLASSES


def _refuse(where: str, message: str) -> UnsafeConfigError:
    return UnsafeConfigError(f"{where}refusing to run: {message}")


def check_hydra_node(hydra: Mapping[str, Any], source: str = "") -> None:
    """Refuse, before Hydra acts on it, anything in the composed ``hydra`` node that would run
    code other than Hydra's stock plugins and diffcli's own: see the module docstring.
    ``source`` names where the config came from (``"evil.yaml: "``) in the one-line error."""
    for path, key, value in _walk(hydra, "hydra"):
        if key and not _allowed(path, key, value):
            raise _refuse(source, f"{path}.{key} names {value!r}, which is not one of Hydra's "
                          "stock plugins or logging classes nor a diffcli callback")
        if not key and value.startswith("ext://") and value not in STREAMS:
            raise _refuse(source, f"{path} names {value!r} (only ext://sys.stdout and "
                          "ext://sys.stderr are allowed)")
    for part in ("job_logging", "hydra_logging"):
        handlers = (hydra.get(part) or {}).get("handlers") or {}
        for name, handler in handlers.items():
            mode = handler.get("mode", "a") if isinstance(handler, Mapping) else "a"
            if mode not in ("a", None):
                raise _refuse(source, f"hydra.{part}.handlers.{name}.mode={mode!r} would "
                              "truncate its file; log files are only appended to (mode a)")
    env = ((hydra.get("job") or {}).get("env_set")) or {}
    for name in env:
        if str(name).upper().startswith(CODE_ENV):
            raise _refuse(source, f"hydra.job.env_set.{name} would make the processes this "
                          "command starts load other code")


# sweeping over these would need each point checked before it runs: such sweeps are refused
SWEEP_GUARDED = ("hydra.callbacks", "hydra.job_logging", "hydra.hydra_logging", "hydra.launcher",
                 "hydra.sweeper", "hydra.job.env_set", "hydra/job_logging",
                 "hydra/hydra_logging", "hydra/launcher", "hydra/sweeper", "hydra/callbacks")
