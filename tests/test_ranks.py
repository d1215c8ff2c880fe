"""A failure in one rank of a multi-process (DDP) run ends every rank, with that rank's line.

Helpers on real child processes, then ``diffcli train trainer.devices=2`` (two CPU ranks) on an
image folder with one unreadable file: whichever rank draws it, the run ends within seconds,
prints that rank's one-line error, exits 1 and leaves no process behind.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import run

from diffcli.lit.ranks import OtherRankFailed, failed_child, kill_all, rank_name, stop_other_ranks


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_rank_name_from_the_launcher_environment():
    assert rank_name({}) is None
    assert rank_name({"LOCAL_RANK": "0", "NODE_RANK": "0"}) is None
    assert rank_name({"LOCAL_RANK": "3"}) == "rank 3"
    assert rank_name({"LOCAL_RANK": "1", "NODE_RANK": "2"}) == "rank 1 on node 2"


def test_failed_child_names_the_rank_and_its_exit_status():
    procs = [_child("import time; time.sleep(30)"), _child("raise SystemExit(3)")]
    try:
        assert failed_child(procs, wait_s=10) == (2, 3)  # procs[1] is rank 2
    finally:
        kill_all(procs)
    assert all(p.returncode is not None for p in procs)
    ok = [_child("pass")]
    ok[0].wait()
    assert failed_child(ok, wait_s=0.2) is None  # exit 0 is not a failure


def test_stop_other_ranks_defers_to_a_failed_child_or_ends_the_children():
    waiting = [_child("import time; time.sleep(30)")]
    stop_other_ranks(waiting, wait_s=0.0)  # rank 0 failed on its own: children are killed
    assert waiting[0].returncode is not None and waiting[0].returncode < 0
    failing = [_child("import time; time.sleep(30)"), _child("raise SystemExit(1)")]
    with pytest.raises(OtherRankFailed) as info:
        stop_other_ranks(failing, wait_s=10)
    assert info.value.exit_code == 1 and info.value.silent
    assert failing[0].returncode is not None


def test_rank_watcher_ends_rank_zero_with_the_childs_status():
    script = (
        "import subprocess, sys, time\n"
        "from diffcli.lit.ranks import RankWatcher\n"
        "procs = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']),\n"
        "         subprocess.Popen([sys.executable, '-c', 'raise SystemExit(7)'])]\n"
        "print(procs[0].pid, flush=True)\n"
        "RankWatcher(procs).start()\n"
        "time.sleep(60)  # rank 0 blocked, as in a collective\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 7, proc.stderr
    assert time.monotonic() - start < 20
    sleeper = int(proc.stdout.split()[0])
    assert not Path(f"/proc/{sleeper}").exists() or "zombie" in Path(
        f"/proc/{sleeper}/status").read_text().lower()


def _folder_with_one_bad_image(root: Path, bad: str) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / f"{bad}.png").write_bytes(b"not a png")
    return root


# which file each rank reads first is fixed by Lightning's DistributedSampler (seed 0)
@pytest.mark.serial
@pytest.mark.parametrize("bad, rank", [("0", "rank 1: "), ("7", "")])
def test_a_failing_rank_ends_the_run_with_its_one_line(tmp_path: Path, bad: str, rank: str):
    images = _folder_with_one_bad_image(tmp_path / "images", bad)
    start = time.monotonic()
    proc = run(tmp_path, "train", "dataset=imagefolder", f"dataset.root={images}",
               "dataset.image_size=8", "dataset.num_workers=0", "dataset.batch_size=2",
               "model=unet", "model.base_channels=8", "model.channel_mults=[1]",
               "trainer.max_steps=4", "trainer.accelerator=cpu", "trainer.devices=2",
               "trainer.strategy=ddp", "logger=none", ok=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert time.monotonic() - start < 120
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert errors == [f"error: {rank}cannot read image {images / (bad + '.png')} (cannot "
                      f"identify image file '{images / (bad + '.png')}'); fix or remove it"]
    left = subprocess.run(["pgrep", "-f", str(images)], capture_output=True, text=True)
    assert left.stdout.strip() == "", "a rank outlived the run"


def test_a_rank_started_as_python_m_diffcli_gets_its_command_back():
    from diffcli.cli.app import worker_args

    env = {"DIFFCLI_COMMAND": "train", "LOCAL_RANK": "1"}
    assert worker_args(["seed=1", "hydra.run.dir=x"], env) == ["train", "seed=1", "hydra.run.dir=x"]
    assert worker_args(["train", "seed=1"], env) == ["train", "seed=1"]
    assert worker_args(["sample", "n=4"], env) == ["sample", "n=4"]  # a leaked marker: kept
    assert worker_args(["seed=1"], {"DIFFCLI_COMMAND": "train"}) == ["seed=1"]  # rank 0 / user
    assert worker_args(["sample"], {"LOCAL_RANK": "1"}) == ["sample"]  # torchrun: no marker
