"""The house rules of the package layout, checked on the source (DESIGN.md): imports point
down only, no cycle between packages, Hydra / OmegaConf only at the edge, no repeated file
names."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "diffcli"
EDGE = ("cli", "__main__", "relaunch", "commands", "checks", "workflows")  # may touch Hydra
HYDRA = ("hydra", "omegaconf")


def _unit(module: str) -> str:
    """diffcli.lit.module -> "lit"; diffcli.runs -> "runs"."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def _imports() -> dict[Path, set[str]]:
    """Every module imported by each file (top-level and function-level imports)."""
    found: dict[Path, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[path] = names
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path, names in _imports().items():
        unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        targets = {_unit(n) for n in names if n.startswith("diffcli.")} - {unit}
        graph.setdefault(unit, set()).update(targets)
    return graph


def test_no_import_cycle_between_packages():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [])


def test_only_the_edge_imports_hydra_and_the_workflows():
    for path, names in _imports().items():
        unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if unit in EDGE:
            continue
        hydra = sorted(n for n in names if n.split(".")[0] in HYDRA)
        assert not hydra, f"{path.relative_to(PACKAGE)} imports {hydra}"
        upward = sorted(n for n in names if n.startswith(
            ("diffcli.workflows", "diffcli.cli", "diffcli.commands", "diffcli.checks")))
        assert not upward, f"{path.relative_to(PACKAGE)} imports {upward}"


def test_lower_layers_do_not_import_higher_ones():
    """commands -> checks -> workflows -> api -> guided_run -> restore / runs -> lit ->
    checkpoint / eval -> data / viz / interop -> diffusion / nets / tasks (errors, files,
    components, console are leaves any layer may use)."""
    order = {"tasks": 0, "diffusion": 0, "nets": 0, "data": 1, "viz": 1, "interop": 1,
             "eval": 2, "checkpoint": 2, "lit": 3, "runs": 4, "restore": 4, "guided_run": 5,
             "api": 6, "workflows": 7, "checks": 8, "commands": 9, "cli": 10}
    for unit, targets in _graph().items():
        if unit not in order:
            continue
        for target in targets:
            if target in order:
                assert order[target] <= order[unit], f"{unit} imports {target} (upward)"


def test_no_two_files_share_a_name():
    names = Counter(p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")
    assert [n for n, k in names.items() if k > 1] == []


@pytest.mark.slow
def test_only_training_imports_lightning(points_checkpoint: Path, tmp_path: Path):
    """``diffcli.load(...).sample()`` and ``diffcli export`` in a fresh interpreter leave
    Lightning (and scikit-learn) unimported: their start-up stays short. (Commands that read the
    training data - a 2-D run's scatter plot, eval-fid's reference, eval-nll - still import it
    through the data module.)"""
    import subprocess
    import sys

    script = (
        "import sys, diffcli\n"
        "from diffcli.cli import app\n"
        f"diffcli.load({str(points_checkpoint)!r}).sample(n=2, steps=2, sampler='ddim')\n"
        "assert 'hydra' not in sys.modules, 'diffcli.load imported hydra'\n"
        f"for args in (['export', 'ckpt={points_checkpoint}', 'out={tmp_path / 'x'}'],):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
        "print(sorted(m for m in ('lightning', 'sklearn', 'torchmetrics') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
LONG_ALLOWED: dict[str, str] = {}  # "path::function" or "path" -> why it may be longer


def test_modules_and_functions_stay_short():
    """No module over 450 lines, no function over 60 (size as a habit, issue 33); an exception
    names itself in :data:`LONG_ALLOWED` with its reason."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(PACKAGE))
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES and name not in LONG_ALLOWED:
            long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES and f"{name}::{node.name}" not in LONG_ALLOWED:
                    long.append(f"{name}::{node.name}: {size} lines")
    assert long == []


def test_nothing_dispatches_on_a_command_name():
    """Commands come from their registry: no ``command == "sample"`` (or ``in (...)``) and no
    ``config_name == ...`` anywhere (issue 33's check)."""
    import re

    pattern = re.compile(r"\b(command|config_name) *(==|!=|in) *[(\"]")
    found = [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}"
             for p in sorted(PACKAGE.rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_no_task_branch_outside_its_room():
    """What a run trained is asked of its :class:`diffcli.tasks.Task` object; only
    ``diffcli/tasks.py`` maps a task's name to it."""
    import re

    pattern = re.compile(r"task\b[^=\n]*(==|!=) *[\"']|[\"'](diffusion|autoencoder|classifier)"
                         r"[\"'] *(==|!=)")
    found = [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}"
             for p in sorted(PACKAGE.rglob("*.py")) if p.name != "tasks.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_loading_a_run_imports_neither_lightning_nor_hydra(points_checkpoint: Path):
    """``import diffcli; diffcli.load(path)`` in a fresh interpreter: the checkpoint room, the
    restore and the pipeline import neither Lightning nor Hydra (nor OmegaConf)."""
    import subprocess
    import sys

    script = ("import sys, diffcli\n"
              f"pipe = diffcli.load({str(points_checkpoint)!r})\n"
              "pipe.sample(n=2, steps=2, sampler='ddim')\n"
              "print(sorted(m for m in ('lightning', 'hydra', 'omegaconf') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
