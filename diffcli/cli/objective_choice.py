"""Which objective a ``diffcli train`` command line means. The default is ``objective=flow``
(flow matching won the per-objective MNIST benchmark, issue 27); a setting that only the DDPM
chain has (its noise schedule, what the network predicts, Min-SNR weighting, the bound's losses,
learned variances) asks for the chain, so given without an objective it selects
``objective=ddpm``. Beside an objective that is not the chain such settings are not read (a
benchmark pins every setting of every objective on one command line), as the config says."""

from __future__ import annotations

from diffcli.cli.overrides import group_names, split_args

# keys (and the nodes under them) that exist for the DDPM chain only, with the value that is the
# same under every objective (given with it, they ask for nothing)
CHAIN_ONLY = ("schedule", "module.prediction", "module.min_snr_gamma", "loss", "model.learn_sigma")
SAME_FOR_ALL = {"loss": "simple", "model.learn_sigma": "false", "module.min_snr_gamma": "null"}


def _key_value(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value.strip()


def chain_settings(overrides: list[str]) -> list[str]:
    """The overrides among ``overrides`` that only the DDPM chain reads (``schedule=cosine``,
    ``module.prediction=eps``, ``loss=hybrid``, ...), as given."""
    found = []
    for o in overrides:
        if "=" not in o:
            continue
        key, value = _key_value(o)
        top = next((c for c in CHAIN_ONLY if key == c or key.startswith(c + ".")), None)
        if top is not None and not (key == top and value.lower() == SAME_FOR_ALL.get(top)):
            found.append(o.lstrip("+"))
    return found


def implied_objective(config_name: str, args: list[str]) -> tuple[list[str], str | None]:
    """``args`` with ``objective=ddpm`` added when they give a DDPM-chain setting but no
    objective (nor an experiment, whose preset picks one), and the line that says so (else
    None); ``args`` unchanged otherwise."""
    if "objective" not in group_names(config_name):
        return args, None
    overrides = split_args(args)
    chain = chain_settings(overrides)
    if not chain:
        return args, None
    if any(key in ("objective", "experiment") for key, _ in map(_key_value, overrides)):
        return args, None
    return ["objective=ddpm", *args], (  # first: Hydra reads flags after the overrides
        f"note: {chain[0]} is a setting of the DDPM chain: training objective=ddpm (the default, "
        "objective=flow, has its own noise levels and target)")
