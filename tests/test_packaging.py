"""What users install is what the tests test: the wheel holds every module and config file of the
source tree, and a wheel installed into a folder of its own (not the source tree, not an editable
install) trains, exports and samples from an unrelated working directory.

The wheel is built from a copy of the files a wheel is made of, so a stale ``build/`` folder of an
earlier build in the checkout cannot hide a module the current packaging rules leave out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


def source_files() -> set[str]:
    """Every file the wheel must hold, as a path inside the wheel: each ``.py`` under ``diffcli/``
    and ``hydra_plugins/`` and each ``.yaml`` under ``diffcli/conf/``."""
    found = {p for top in ("diffcli", "hydra_plugins") for p in (REPO / top).rglob("*.py")}
    found |= set((REPO / "diffcli" / "conf").rglob("*.yaml"))
    return {p.relative_to(REPO).as_posix() for p in found if "__pycache__" not in p.parts}


def build_wheel(src: Path, out: Path) -> Path:
    """``pip wheel`` of the project files copied from ``src`` (no dependencies, no network)."""
    tree = out / "src"
    tree.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(src / name, tree / name)
    for top in ("diffcli", "hydra_plugins"):
        shutil.copytree(src / top, tree / top, ignore=IGNORED)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--no-index",
                           "--no-build-isolation", "-w", str(out / "wheel"), str(tree)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (out / "wheel").glob("diffcli-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(REPO, tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_every_module_and_config(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(source_files() - names)
    assert not missing, f"left out of the wheel: {missing}"
    assert "diffcli/interop/__init__.py" in names  # the module a hand-kept list once forgot
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "diffcli = diffcli.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_a_module_left_out_of_the_packaging_is_caught(tmp_path: Path):
    """The check above can fail: a package that setuptools would not find (a folder without
    ``__init__.py`` whose name is excluded) goes missing from the wheel and is reported."""
    src = tmp_path / "copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for top in ("diffcli", "hydra_plugins"):
        shutil.copytree(REPO / top, src / top, ignore=IGNORED)
    toml = (src / "pyproject.toml").read_text()
    assert 'include = ["diffcli*", "hydra_plugins*"]' in toml
    (src / "pyproject.toml").write_text(toml.replace(
        'include = ["diffcli*", "hydra_plugins*"]',
        'include = ["diffcli*", "hydra_plugins*"]\nexclude = ["diffcli.interop"]'))
    names = set(zipfile.ZipFile(build_wheel(src, tmp_path / "out")).namelist())
    missing = {p for p in source_files() if p not in names}
    assert missing == {p for p in source_files() if p.startswith("diffcli/interop/")
                       and p.count("/") == 2}


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> dict[str, str]:
    """The wheel installed into a folder of its own (``pip install --target``, no dependencies:
    those come from this environment), and the environment that puts it first on the path."""
    target = tmp_path_factory.mktemp("target")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                           "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**os.environ, "PYTHONPATH": str(target), "COLUMNS": "200",
            "DIFFCLI_TARGET": str(target)}


def _diffcli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(env["DIFFCLI_TARGET"]) / "bin" / "diffcli"
    proc = subprocess.run([sys.executable, str(exe), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"diffcli {' '.join(args)}:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_the_installed_wheel_trains_exports_and_samples(installed: dict[str, str],
                                                        tmp_path: Path):
    target = installed["DIFFCLI_TARGET"]
    where = subprocess.run([sys.executable, "-c", "import diffcli; print(diffcli.__file__)"],
                           cwd=tmp_path, env=installed, capture_output=True, text=True)
    assert where.stdout.strip().startswith(target), where.stdout + where.stderr
    _diffcli(installed, tmp_path, "train", "dataset=digits", "trainer.max_steps=2", "logger=csv")
    (run,) = (p.parent for p in tmp_path.glob("outputs/*/*/checkpoints"))
    common = ["sampler=ddim", "steps=4", "n=6"]
    for fmt in ("safetensors", "diffusers"):  # onnx: tests/test_export.py, on this install in CI
        _diffcli(installed, tmp_path, "export", f"format={fmt}")
        assert any((run / "export" / fmt).iterdir())
    exported = run / "export" / "safetensors" / "model.safetensors"
    _diffcli(installed, tmp_path, "sample", f"ckpt={exported}", *common)
    meta = json.loads((run / "export" / "safetensors" / "samples" / "ddim-4" / "meta.json")
                      .read_text())
    assert (meta["nfe"], meta["n"]) == (4, 6)
    # diffcli.load from the installed package: the safetensors file and the diffusers folder
    api = ("import sys, diffcli\n"
           "for path in sys.argv[1:]:\n"
           "    x = diffcli.load(path).sample(n=3, steps=4, sampler='ddim')\n"
           "    print(tuple(x.shape), diffcli.__file__)\n")
    proc = subprocess.run([sys.executable, "-c", api, str(exported), str(run / "export" /
                                                                       "diffusers")],
                          cwd=tmp_path, env=installed, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.strip().splitlines()
    assert len(printed) == 2, proc.stdout
    for line in printed:
        shape, where = line.split(")")[0] + ")", line.split(")")[1].strip()
        assert shape == "(3, 1, 8, 8)" and where.startswith(target)


def test_the_suite_runs_against_the_installed_package():
    """Under CI the package the tests import is the non-editable install, not the checkout."""
    import diffcli

    if not os.environ.get("CI"):
        pytest.skip("outside CI a developer may test an editable install")
    here = Path(diffcli.__file__).resolve()
    assert here != REPO / "diffcli" / "__init__.py", f"tests import the checkout ({here})"
    assert "site-packages" in here.parts, here


def _readme_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    after = text.split("## Two commands", 1)[1]
    return [b.split("```", 1)[0].strip() for b in after.split("```bash\n")[1:3]]


def test_ci_installs_and_tests_as_the_readme_says():
    """.ci/run installs non-editable with the constraints and runs the README's test command."""
    install, test = _readme_blocks()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert 'pip install ".[dev]" -c constraints.txt' in install and "-e" not in install.split()
    assert any(line.startswith('pip install ".[dev]" -c constraints.txt') for line in ci)
    assert any(line.startswith(test) for line in ci), test
    assert "-n 2" in test and "-m serial" in test  # both passes: nothing is left out
