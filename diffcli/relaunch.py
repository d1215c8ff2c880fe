"""Re-entry point for worker processes started as ``python <this file> <overrides...>``.

Lightning's DDP launcher (and similar) starts each extra rank by re-running
``sys.argv[0]`` with the same arguments plus a few Hydra overrides. ``diffcli <command>``
points ``sys.argv[0]`` here and names the command in ``DIFFCLI_COMMAND``, so the workers
run the same command with the same overrides.
"""

import os
import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a script: don't let diffcli's own modules shadow top-level ones

from diffcli.cli import app  # noqa: E402

if __name__ == "__main__":
    app([os.environ.get("DIFFCLI_COMMAND", "train"), *sys.argv[1:]])
