"""FID, IS, KID and precision/recall from extracted features.

* ``fid`` - Frechet Inception Distance (Heusel et al. 2017): :func:`frechet_distance` of the
  float64 Gaussians of the pool features (N, 2048) of both sides. Lower is better.
* ``isc`` - Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) over the
  generated logits (N, 1008), mean and std over 10 splits (torch-fidelity). Higher is better.
* ``kid`` - Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic
  polynomial kernel on pool features, mean and std over 100 subsets of
  min(1000, N_fake, N_ref) (torch-fidelity). Lower is better.
* ``prc`` - improved precision and recall (Kynkaanniemi et al. 2019): k = 3 nearest-neighbour
  balls on pool features (torch-fidelity; computed here on the Inception pool features,
  where torch-fidelity would default to VGG-16). Higher is better.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffcli.errors import DiffcliError
from diffcli.eval.cache import RefStats
from diffcli.eval.features import FeatureResult
from diffcli.eval.fid import frechet_distance

METRICS: tuple[str, ...] = ("fid", "isc", "kid", "prc")
REFERENCE_METRICS = frozenset({"fid", "kid", "prc"})  # the ones that compare with real images
NEEDS_REF_FEATURES = frozenset({"kid", "prc"})
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
ISC_SPLITS = 10
PRC_NEIGHBORHOOD = 3
LOWER_IS_BETTER = frozenset({"fid", "kid_mean"})


def parse_metrics(spec: str | Sequence[str] | None) -> list[str]:
    """``fid`` / ``[fid,kid]`` / ``"fid,isc"`` -> a list of known metric names, in order."""
    if spec is None:
        return ["fid"]
    items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    names = [s.strip().lower() for s in items if s.strip()]
    unknown = [s for s in names if s not in METRICS]
    if unknown or not names:
        raise DiffcliError(f"unknown metric {', '.join(unknown) or '(none)'}; choose from: "
                           f"{', '.join(METRICS)} (e.g. metrics=[fid,kid])")
    return list(dict.fromkeys(names))


def compute_metrics(metrics: Sequence[str], fake: FeatureResult, ref: RefStats | None,
                    layers: dict[str, str], rng_seed: int = 2020) -> dict[str, float]:
    """The requested metrics of the generated features ``fake`` against ``ref``.

    ``layers`` maps metric -> feature name (the extractor's defaults). Keys of the result:
    fid; isc_mean, isc_std; kid_mean, kid_std; precision, recall, f_score.
    """
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    out: dict[str, float] = {}
    if "fid" in metrics:
        assert ref is not None
        out["fid"] = frechet_distance(fake.stats.mu, fake.stats.sigma, ref.stats.mu,
                                      ref.stats.sigma)
    if "isc" in metrics:
        splits = min(ISC_SPLITS, fake.n)
        isc = isc_features_to_metric(fake.kept[layers["isc"]], splits=splits, shuffle=True,
                                     rng_seed=rng_seed)
        out |= {"isc_mean": isc["inception_score_mean"], "isc_std": isc["inception_score_std"]}
    if "kid" in metrics:
        assert ref is not None and ref.features is not None
        size = min(KID_SUBSET_SIZE, fake.n, ref.features.shape[0])
        kid = kid_features_to_metric(fake.kept[layers["kid"]], ref.features,
                                     kid_subsets=KID_SUBSETS, kid_subset_size=size,
                                     rng_seed=rng_seed, verbose=False)
        out |= {"kid_mean": kid["kernel_inception_distance_mean"],
                "kid_std": kid["kernel_inception_distance_std"]}
    if "prc" in metrics:
        assert ref is not None and ref.features is not None
        if min(fake.n, ref.features.shape[0]) <= PRC_NEIGHBORHOOD:
            raise DiffcliError(f"metrics=prc needs more than {PRC_NEIGHBORHOOD} images per side")
        prc = prc_features_to_metric(fake.kept[layers["prc"]], ref.features,
                                     prc_neighborhood=PRC_NEIGHBORHOOD, prc_batch_size=2000,
                                     save_cpu_ram=True, verbose=False)
        out |= {k: float(prc[k]) for k in ("precision", "recall", "f_score")}
    return out
