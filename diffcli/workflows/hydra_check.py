"""Compose what ``hydra.main`` will compose and check its ``hydra`` node
(:mod:`diffcli.hydra_nodes`) before Hydra acts on it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffcli.components import UnsafeConfigError
from diffcli.hydra_nodes import SWEEP_GUARDED, check_hydra_node


def check_composed_hydra(config_name: str, overrides: Sequence[str], primary: Path,
                         config_dirs: Sequence[str], file_name: str | None, *,
                         files: bool) -> None:
    """Compose ``file_name`` (else ``config_name``) from ``primary`` and the ``--config-dir``
    folders ``config_dirs`` with every override, ``hydra.*`` included, on the search path
    ``hydra.main`` builds, and refuse its ``hydra`` node when it would run code. Without config
    files (``files``) and ``hydra`` overrides only the shipped tree is composed, whose nodes
    ``tests/test_ways_in.py`` checks: nothing to do."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    loader = config_loader(primary, config_dirs)  # a glob() sweep asks it for group options
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(list(overrides))
    check_run_dirs(parsed)
    if not files and not any(o.get_key_element().lstrip("+~").startswith(("hydra.", "hydra/"))
                             for o in parsed):
        return
    for o in parsed:
        if o.is_sweep_override() and o.get_key_element().lstrip("+~").startswith(SWEEP_GUARDED):
            raise UnsafeConfigError(f"{o.input_line}: refusing to sweep over Hydra's callbacks, "
                                    "logging, launcher or job environment; give one value")
    concrete = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
                if o.is_sweep_override() else o.input_line for o in parsed]
    cfg = loader.load_configuration(file_name or config_name, overrides=concrete,
                                    run_mode=RunMode.RUN)
    check_hydra_node(OmegaConf.to_container(cfg.hydra, resolve=False),
                     f"{file_name}.yaml: " if file_name else "")


def config_loader(primary: Path, config_dirs: Sequence[str]) -> Any:
    """Hydra's config loader on the search path ``hydra.main`` builds: ``primary`` and the
    ``--config-dir`` folders ``config_dirs``."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    search_path = create_config_search_path(f"file://{primary}")
    for folder in config_dirs:  # as hydra.main adds --config-dir
        search_path.prepend(provider="command-line", path=f"file://{folder}",
                            anchor=SearchPathQuery(provider="schema"))
    return ConfigLoaderImpl(config_search_path=search_path)


RUN_DIR_KEYS = ("hydra.run.dir", "hydra.sweep.dir")


def check_run_dirs(parsed: Sequence[Any]) -> None:
    """``hydra.run.dir=`` / ``hydra.sweep.dir=`` overrides name folders that can be made and
    written (their part before any ``${...}``), or one line before Hydra tries (its own error
    is a traceback)."""
    from diffcli.files import check_writable

    for o in parsed:
        key = o.get_key_element().lstrip("+~")
        if key not in RUN_DIR_KEYS or o.is_sweep_override():
            continue
        value = o.value()
        static = str(value).split("${", 1)[0] if isinstance(value, str) else ""
        if static.strip():
            check_writable(Path(static), key, Path(str(value)))
