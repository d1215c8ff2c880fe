"""diffcli: train, sample, evaluate and visualize denoising diffusion models.

From Python: ``pipe = diffcli.load(<run folder | checkpoint | exported model>)``, then
``pipe.sample(...)``, ``pipe.nll(x)``, ``pipe.noise(x0, t)`` (:mod:`diffcli.api`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Pipeline", "load"]


def __getattr__(name: str) -> Any:  # lazy: the command line does not import torch for --help
    if name in __all__:
        from diffcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'diffcli' has no attribute {name!r}")
