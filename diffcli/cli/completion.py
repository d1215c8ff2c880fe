"""Shell completion of Hydra overrides (``diffcli --install-completion``): keys, config group
options, schema choices and booleans, for the command being typed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from diffcli.cli.overrides import CONF_DIR, group_names, split_args, validate
from diffcli.workflows.trainer_args import SET_BY_DIFFCLI, trainer_keys

if TYPE_CHECKING:
    from diffcli.commands import Command


def _value_choices(command: Command, cfg: Any, key: str) -> list[str]:
    """The values worth offering for ``key=``: a group's options, a schema's choices, or
    true/false for a boolean."""
    import typing

    from omegaconf import OmegaConf

    groups = group_names(command.config)
    if key in groups:
        return sorted(p.stem for p in (CONF_DIR / groups[key]).glob("*.yaml"))
    schema = command.keys.get(key)
    if schema is not None and schema.choices:
        return [str(c) for c in schema.choices]
    hint = schema.type if schema is not None else None
    if isinstance(OmegaConf.select(cfg, key), bool) or hint is bool or (
            bool in typing.get_args(hint)):
        return ["true", "false"]
    return []


def _joined(words: list[str]) -> list[str]:
    """Words as bash splits them at ``=`` (``a``, ``=``, ``b``) joined back (``a=b``)."""
    out: list[str] = []
    for w in words:
        if out and (w == "=" or out[-1].endswith("=")) and not w.startswith("-"):
            out[-1] += w
        else:
            out.append(w)
    return out


def _key_then_equals(typed: list[str]) -> bool:
    """Whether ``typed`` ends with a key whose ``=`` Click dropped: bash makes ``key=`` (cursor
    after the ``=``) the words ``key``, ``=``, and Click discards an ``=`` being completed."""
    words = _joined(typed)
    return bool(words) and "=" not in words[-1] and split_args(words)[-1:] == words[-1:]


def complete_override(command: Command, incomplete: str, typed: list[str]) -> list[str]:
    """Shell completions for one Hydra override being typed: ``sam`` -> ``sampler=``,
    ``sampler.``, ``samples=``; ``sampler=d`` -> ``sampler=ddim``, ``sampler=ddpm``;
    ``sampler.`` -> the sampler node's keys (as the overrides already ``typed`` compose them);
    ``clip_denoised=`` -> true, false. In bash, which splits words at ``=``, the word being
    completed is the value alone (``typed`` ends with ``key``, ``=``; or with ``key`` when the
    cursor is right after the ``=``), and so are the results.
    """
    from omegaconf import OmegaConf

    if not incomplete and _key_then_equals(typed):
        typed = [*typed, "="]
    bash_value = len(typed) >= 2 and typed[-1] == "="
    words = _joined(typed[:-2] if bash_value else typed)
    try:
        cfg = validate(command.config, [a for a in words if "=" in a and not a.startswith("-")])
    except Exception:  # noqa: BLE001 - a bad earlier override: complete against the defaults
        cfg = validate(command.config, [])
    if bash_value:
        key = typed[-2].lstrip("+~")
        return [v for v in _value_choices(command, cfg, key) if v.startswith(incomplete)]
    prefix = incomplete[0] if incomplete[:1] in ("+", "~") else ""
    body = incomplete[len(prefix):]
    if "=" in body:
        key, _, value = body.partition("=")
        return [f"{prefix}{key}={v}" for v in _value_choices(command, cfg, key)
                if v.startswith(value)]
    parent, _, _ = body.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not OmegaConf.is_dict(node):
        return []
    names = [n for n in node if not n.startswith("_") and (parent or n != "hydra")]
    dotted = f"{parent}." if parent else ""
    found = {f"{dotted}{n}." for n in names if OmegaConf.is_dict(node[n]) and len(node[n])}
    if parent == "trainer":  # any Lightning Trainer argument, not only those the config sets
        names += [k for k in trainer_keys() if k not in SET_BY_DIFFCLI]
    found |= {f"{dotted}{n}=" for n in names}
    found |= {f"{g}=" for g in group_names(command.config) if not parent}
    return sorted(prefix + c for c in found if c.startswith(body))


class OverrideCommand(typer.core.TyperCommand):
    """A Hydra command whose shell completion also completes overrides
    (:func:`complete_override`); install it with ``diffcli --install-completion``. Subclassed
    once per command (:func:`completing`), which it knows as ``command``."""

    command: Command

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        try:  # recent Typer carries its own copy of Click (which it no longer requires)
            from typer._click.shell_completion import CompletionItem
        except ImportError:
            from click.shell_completion import CompletionItem

        found = super().shell_complete(ctx, incomplete)
        if incomplete.startswith("-"):
            return found
        try:
            words = complete_override(self.command, incomplete, list(ctx.args))
        except Exception:  # noqa: BLE001 - the shell reads stdout: no candidates, no traceback
            words = []
        return found + [CompletionItem(w) for w in words]


def completing(command: Command) -> type[OverrideCommand]:
    """The Click command class of ``command``: it completes that command's overrides."""
    return type(f"{command.config.title().replace('_', '')}Command", (OverrideCommand,),
                {"command": command})
