"""``sampler=auto``'s table from both yardsticks of issue 34.

* **The exact yardstick** (``benchmarks/sampler_nfe.py``): MMD^2 between each candidate's
  samples and the exact ODE solution of a 2-D mixture under exact networks, at NFE 5, 8, 10, 15,
  20, 30, 50. Every error is the sampler's, but the data is a toy.
* **The trained-model yardstick**: LeNet-FID of 500 MNIST digits from a network trained here, at
  NFE 5, 10 and 20 (``benchmarks/lenet_fid.py``'s ``samplers`` table for the DDPM chain,
  ``benchmarks/objectives_mnist.py``'s ``samplers_edm`` and ``samplers_flow``). What users see,
  but noisier, and measured at three NFEs only.

The rule, per objective and NFE: where the trained-model table measured this NFE, the
candidates within :data:`SLACK` (5%) of its best LeNet-FID are eligible, and among them the one
with the lowest MMD^2 + 2 standard errors on the mixture wins; everywhere else (or when no
eligible candidate has a mixture cell) the lowest MMD^2 + 2 standard errors among all candidates.
So at 5, 10 and 20 NFE the pick is within 5% of the best configuration a trained model showed
(half issue 34's 10% tolerance: a margin against the scatter of 500-sample scores), and the toy
breaks the ties the trained model's scatter cannot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import yaml

from benchmarks.core import load

# objective -> (benchmark, table) of its trained-model yardstick
TRAINED = {"ddpm": ("lenet_fid", "samplers"), "edm": ("objectives_mnist", "samplers_edm"),
           "flow": ("objectives_mnist", "samplers_flow")}
SLACK = 1.05  # eligible: LeNet-FID within 5% of the best at that NFE


def value(c: Mapping[str, Any] | None) -> float:
    """A mixture cell's score for ranking: its MMD^2 plus two standard errors, an upper bound,
    so that a noisy cell (a stochastic sampler's, uncoupled) cannot win by its scatter; inf
    where the row cannot run or gave non-finite samples."""
    if c is None or not math.isfinite(c["mmd"]):
        return math.inf
    return c["mmd"] + 2 * c["se"]


def best(rows: list[Mapping[str, Any]], i: int) -> Mapping[str, Any] | None:
    """The row with the lowest cell in column i (by :func:`value`)."""
    ranked = [r for r in rows if math.isfinite(value(r["cells"][i]))]
    return min(ranked, key=lambda r: value(r["cells"][i])) if ranked else None


def config_key(sampler: str, options: Mapping[str, Any]) -> str:
    """One configuration as a comparable string: the sampler and its options (grid included)."""
    return json.dumps([sampler, dict(options)], sort_keys=True)


def trained_scores(objective: str) -> dict[int, dict[str, float]]:
    """NFE -> configuration key -> LeNet-FID on the objective's trained model (auto's own row
    left out); empty when that benchmark has no published result."""
    bench, table = TRAINED[objective]
    record = load(bench)
    rows = [] if record is None else record["result"]["tables"].get(table, [])
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["sampler"] != "auto":
            out.setdefault(r["sampler_steps"], {})[config_key(r["sampler"], r["options"])] = (
                r["lenet_fid"])
    return out


def pick(candidates: list[Mapping[str, Any]], i: int, nfe: int,
         trained: Mapping[int, Mapping[str, float]]) -> Mapping[str, Any] | None:
    """The candidate row auto takes at column ``i`` (``nfe`` evaluations), by the rule above."""
    scores = trained.get(nfe, {})
    if scores:
        top = min(scores.values())
        eligible = [r for r in candidates
                    if scores.get(config_key(*r["config"]), math.inf) <= SLACK * top]
        chosen = best(eligible, i)
        if chosen is not None:
            return chosen
    return best(candidates, i)


def auto_table(result: Mapping[str, Any]) -> str:
    """The YAML ``sampler=auto`` reads (:mod:`diffcli.diffusion.samplers.auto`): per objective
    and NFE of sampler_nfe's ``result``, the candidate :func:`pick` takes, with its mixture
    MMD^2 and (where measured) its LeNet-FID."""
    table = {}
    for objective, part in result["objectives"].items():
        candidates = [r for r in part["rows"] if r["candidate"]]
        trained = trained_scores(objective)
        table[objective] = []
        for i, nfe in enumerate(result["nfes"]):
            top = pick(candidates, i, nfe, trained)
            if top is None:
                continue
            name, options = top["config"]
            row = {"nfe": nfe, "sampler": name, "options": options,
                   "mmd": float(f"{top['cells'][i]['mmd']:.3g}")}
            fid = trained.get(nfe, {}).get(config_key(name, options))
            if fid is not None:
                row["lenet_fid"] = round(fid, 2)
            table[objective].append(row)
    head = ("# sampler=auto's choices, per objective and NFE: where a trained MNIST model\n"
            "# measured that NFE, of the configurations within 5% of its best LeNet-FID, the\n"
            "# one with the lowest MMD^2 to the exact ODE solution on the 2-D mixture; elsewhere\n"
            "# the lowest MMD^2 (benchmarks/auto_pick.py). Written from docs/results/\n"
            "# sampler_nfe.json, lenet_fid.json and objectives_mnist.json; regenerate with\n"
            "#   python -m benchmarks render   (after running any of the three)\n")
    dumper = type("NoAliases", (yaml.SafeDumper,), {"ignore_aliases": lambda *_: True})
    return head + yaml.dump({"objectives": table}, Dumper=dumper, sort_keys=False)


def current_picks(objective: str) -> dict[int, str]:
    """NFE -> configuration key that auto's table picks today for ``objective`` (from the
    published sampler_nfe result and the trained-model results; empty without sampler_nfe's)."""
    record = load("sampler_nfe")
    if record is None or objective not in record["result"]["objectives"]:
        return {}
    result = record["result"]
    candidates = [r for r in result["objectives"][objective]["rows"] if r["candidate"]]
    trained = trained_scores(objective)
    out = {}
    for i, nfe in enumerate(result["nfes"]):
        chosen = pick(candidates, i, nfe, trained)
        if chosen is not None:
            out[nfe] = config_key(*chosen["config"])
    return out
