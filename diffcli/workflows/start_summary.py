"""What `diffcli train` prints as it starts: the composed config groups as a tree, one line a
group with its main keys (the lightning-hydra-template's ``print_config_tree``, without the
200-line dump), and the network's parameters per top-level module. Drawn as plain lines (not
a ``rich.tree.Tree``, which cuts its lines at the console's width: a log has none).

Pure functions of plain inputs (the group choices, the resolved config as a dict, the network,
the numbers the trainer decided), so the summary is testable without a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from torch import nn

from diffcli.diffusion.objectives import is_chain
from diffcli.tasks import Task

Section = Mapping[str, Any]


@dataclass(frozen=True)
class StartFacts:
    """What the data module and the trainer decided: numbers the config alone does not give."""

    run_dir: Path
    data_shape: tuple[int, ...]  # one training example
    num_samples: int
    per_device: int  # dataset.batch_size
    world: int  # processes (devices x nodes)
    accumulate: int
    precision: str  # what Lightning trains in, e.g. "32-true"
    device: str  # "cpu", "cuda", "mps"
    timesteps: int | None = None  # the schedule's T (None: the task has no schedule)
    latents: tuple[int, ...] | None = None  # latent diffusion: the shape it trains on
    encodes_to: tuple[int, ...] | None = None  # an autoencoder: the shape of its latents


def parameter_rows(net: nn.Module) -> list[tuple[str, int]]:
    """``(name, parameters)`` per top-level child of ``net`` that holds any, then
    ``("(own)", n)`` for ``net``'s own; a shared parameter counts in the first child holding it,
    so the counts add up to ``sum(p.numel() for p in net.parameters())`` exactly. A child whose
    parameters are all frozen is named ``"<name> (frozen)"``."""
    seen: set[int] = set()

    def fresh(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
        new = [p for p in params if id(p) not in seen]
        seen.update(id(p) for p in new)
        return new

    rows = []
    for name, child in [*net.named_children(), ("(own)", None)]:
        params = fresh(net.parameters(recurse=False) if child is None else child.parameters())
        if params:
            frozen = child is not None and not any(p.requires_grad for p in params)
            rows.append((name + (" (frozen)" if frozen else ""), sum(p.numel() for p in params)))
    return rows


def parameter_lines(net: nn.Module) -> list[str]:
    """:func:`parameter_rows` and their total, as aligned ``name  count`` lines."""
    rows = parameter_rows(net)
    rows.append(("total", sum(c for _, c in rows)))
    name_w = max(len(n) for n, _ in rows)
    count_w = max(len(f"{c:,}") for _, c in rows)
    return [f"{n:<{name_w}}  {c:>{count_w},}" for n, c in rows]


def _short(value: Any) -> str:
    """A config value as one short word: 2e-4 -> "0.0002", [1, 2] -> "(1, 2)"."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}" if value >= 10_000 else str(value)
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return str(value)


def _keys(section: Section, names: Iterable[str]) -> str:
    """``name value`` for those of ``names`` set in ``section`` (not null, not empty)."""
    def shown(value: Any) -> bool:  # 0 is shown, False is not (0 == False in Python)
        return value is not None and value is not False and value not in ([], "")

    return ", ".join(f"{n} {_short(section[n])}" for n in names if shown(section.get(n)))


def _target(section: Section) -> str:
    return str(section.get("_target_", "")).rsplit(".", 1)[-1]


def _dataset(section: Section, config: Section, f: StartFacts) -> str:
    shape = f"latents {f.latents}" if f.latents else str(f.data_shape)
    return (f"{shape} x {f.num_samples:,}, batch {f.per_device} per device x {f.world} "
            f"device(s) x {f.accumulate} accumulation = {f.per_device * f.world * f.accumulate}")


def _network(section: Section, config: Section, f: StartFacts) -> str:
    return ", ".join(filter(None, [_target(section), _keys(section, (
        "base_channels", "channel_mults", "num_res_blocks", "attention_levels", "hidden",
        "patch_size", "hidden_size", "depth", "width", "z_channels", "learn_sigma")),
        f"latents {f.encodes_to}" if f.encodes_to else ""]))


def _schedule(section: Section, config: Section, f: StartFacts) -> str:
    return ", ".join(filter(None, [f"T={f.timesteps}" if f.timesteps else "", _keys(
        section, ("beta_start", "beta_end", "s"))]))


def continuous(config: Section) -> bool:
    """Whether the run trains a continuous objective (EDM, flow): its own noise levels, target
    and weighting replace the schedule, prediction and loss."""
    return not is_chain(config.get("objective"))


def _objective(section: Section, config: Section, f: StartFacts) -> str:
    if not continuous(config):
        return "DDPM's discrete chain (schedule above, prediction and loss below)"
    keys = ("sigma_data", "p_mean", "p_std", "sigma_min", "sigma_max", "uncertainty_weighting",
            "interpolant", "target", "t_sampling", "shift")
    shift = "" if section.get("shift", 1) is not None else "shift sqrt(H W) / base_resolution"
    return ", ".join(filter(None, [_target(section), _keys(section, keys), shift]))


def _ema(section: Section) -> str:
    if section.get("ema_sigma_rel") is not None:
        return f"EMA power profile sigma_rel {_short(section['ema_sigma_rel'])}"
    if section.get("ema_decay") is not None:
        warm = " with warm-up" if section.get("ema_warmup") else ""
        return f"EMA {_short(section['ema_decay'])}{warm}"
    return "no EMA"


def _module(section: Section, config: Section, f: StartFacts) -> str:
    parts = []
    if "prediction" in section and continuous(config):
        if config.get("conditional"):
            parts.append(f"class-conditional, label drop {_short(section.get('cond_drop_prob'))}")
    elif "prediction" in section:
        parts.append(f"{section['prediction']} prediction")
        loss = config.get("loss") or {}
        parts.append(f"loss {_target(loss).lower() or 'simple'}")
        if section.get("min_snr_gamma") is not None:
            parts.append(f"min-SNR gamma {_short(section['min_snr_gamma'])}")
        if config.get("conditional"):
            parts.append(f"class-conditional, label drop {_short(section.get('cond_drop_prob'))}")
    parts.append(_keys(section, ("l1_weight", "l2_weight", "kl_weight", "disc_start")))
    if "ema_decay" in section or "ema_sigma_rel" in section:
        parts.append(_ema(section))
    return ", ".join(filter(None, parts))


def _optimizer(section: Section, config: Section, f: StartFacts) -> str:
    return ", ".join(filter(None, [_target(section), _keys(
        section, ("lr", "betas", "weight_decay", "momentum"))]))


def _lr_scheduler(section: Section, config: Section, f: StartFacts) -> str:
    warm = f"warm-up {_short(section.get('warmup_steps') or 0)} steps"
    if "total_steps" in section:
        total = section.get("total_steps")
        end = "the end of trainer.max_time" if total in (None, -1) else f"step {_short(total)}"
        return f"{warm}, cosine decay to {_short(section.get('min_ratio', 0.0))} x lr at {end}"
    if "warmup_steps" in section:
        return f"{warm}, then constant"
    return _target(section)


def _trainer(section: Section, config: Section, f: StartFacts) -> str:
    steps, smoke = section.get("max_steps"), section.get("fast_dev_run")
    length = [f"{_short(steps)} steps" if isinstance(steps, int) and steps > 0 else "",
              f"until {section['max_time']}" if section.get("max_time") else ""]
    if smoke:  # Lightning runs 1 (true) or N batches, whatever max_steps says
        length = [f"smoke run of {1 if smoke is True else smoke} step(s) (fast_dev_run)"]
    strategy = section.get("strategy")
    return ", ".join(filter(None, [
        " or ".join(filter(None, length)), f"precision {f.precision}",
        f"{f.device} x {f.world}" + (f" ({strategy})" if strategy not in (None, "auto") else ""),
        _keys(section, ("gradient_clip_val",))]))


def _callbacks(section: Section, config: Section, f: StartFacts) -> str:
    on = [f"{name} every {_short(node['every_n_steps'])} steps"
          for name, node in section.items()
          if isinstance(node, Mapping) and node.get("every_n_steps")]
    return ", ".join(on) or "none"


DESCRIBE: dict[str, Callable[[Section, Section, StartFacts], str]] = {
    "dataset": _dataset, "model": _network, "autoencoder": _network, "text_encoder": _network,
    "schedule": _schedule, "objective": _objective, "module": _module, "optimizer": _optimizer,
    "lr_scheduler": _lr_scheduler, "trainer": _trainer, "callbacks": _callbacks}


def groups_shown(task: Task, choices: Mapping[str, str | None],
                 objective: bool = False) -> list[str]:
    """The groups this run uses, in the order of the summary: the network group of its task
    (``autoencoder`` or ``model``), no schedule for an autoencoder, the objective of a model
    that generates (a continuous ``objective``: no schedule), the optional groups only when
    chosen."""
    network = "autoencoder" if task.encodes else "model"
    noise = [] if task.encodes else ["schedule"]
    if task.generates:
        noise = ["objective"] if objective else ["schedule", "objective"]
    groups = ["experiment", "dataset", network, "text_encoder", *noise,
              "module", "optimizer", "lr_scheduler", "trainer", "callbacks", "logger"]
    optional = ("experiment", "text_encoder")
    return [g for g in groups if g not in optional or choices.get(g) is not None]


def group_lines(choices: Mapping[str, str | None], config: Section, task: Task,
                facts: StartFacts) -> list[tuple[str, str]]:
    """``(group, "choice  main keys")`` for each group of :func:`groups_shown`."""
    lines = []
    for group in groups_shown(task, choices, continuous(config)):
        section = config.get(group)
        choice = choices.get(group) or ("none" if not section else "(inline)")
        describe = DESCRIBE.get(group)
        detail = describe(section, config, facts) if describe and section else ""
        lines.append((group, f"{choice}  {detail}" if detail else str(choice)))
    latent = config.get("latent") or {}
    source = latent.get("ckpt") or latent.get("pretrained")
    if source and task.takes_latent:
        after = [g for g, _ in lines].index("dataset") + 1
        lines.insert(after, ("latent", f"{source}" + (" (cached)" if latent.get("cache") else "")))
    return lines


def tree_lines(root: str, branches: list[tuple[str, list[str]]]) -> list[str]:
    """``root``, then each branch and its leaves drawn with tree guides (``├──``, ``└──``)."""
    lines = [root]
    for i, (branch, leaves) in enumerate(branches):
        last = i == len(branches) - 1
        lines.append(("└── " if last else "├── ") + branch)
        lines += [("    " if last else "│   ") + ("└── " if j == len(leaves) - 1 else "├── ") + leaf
                  for j, leaf in enumerate(leaves)]
    return lines


def start_lines(choices: Mapping[str, str | None], config: Section, net: nn.Module, task: Task,
                facts: StartFacts) -> list[str]:
    """The start summary, as rich markup lines: the run folder, then one branch a group; the
    network's branch holds its parameters per top-level module (:func:`parameter_lines`)."""
    network = "autoencoder" if task.encodes else "model"
    branches = [(f"[bold]{group}[/]: {escape(line)}",
                 [escape(row) for row in parameter_lines(net)] if group == network else [])
                for group, line in group_lines(choices, config, task, facts)]
    return tree_lines(f"[bold]diffcli train[/]: {task.noun}, run dir "
                      f"{escape(str(facts.run_dir))}", branches)
