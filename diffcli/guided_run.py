"""A run with its guidance resolved: which classes, which classifier or prompt, which scales -
checked against the model and wrapped around its denoiser (:class:`GuidedRun`).

``classes=`` (``7``, ``0-9``, ``[1,3,5]``, ``all`` or a list) picks the classes; the samples are
split into one block per class, in order, so an image grid has one row per class: ``n`` is rounded
up to a multiple of the number of classes (:meth:`GuidedRun.even_seeds`, which says so).
A class-conditional model (``diffcli train conditional=true``) is sampled with classifier-free
guidance of scale ``guidance`` (Ho & Salimans 2022: 0 = unconditional, 1 = conditional,
> 1 = guided); ``classifier=<ckpt>`` (``diffcli train task=classifier``) adds classifier
guidance of scale ``classifier_scale`` (Dhariwal & Nichol 2021) to a conditional or an
unconditional model. The maths is :mod:`diffcli.diffusion.guidance`; this module opens the
classifier's checkpoint, checks that it fits the model, and says what is wrong in one line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffcli.checkpoint import LoadedRun, load_checkpoint
from diffcli.components import build_net
from diffcli.diffusion.autoguidance import Autoguidance
from diffcli.diffusion.denoiser import Denoiser
from diffcli.diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance
from diffcli.diffusion.schedules import NoiseSchedule
from diffcli.errors import DiffcliError, number_text, user_errors
from diffcli.restore import OpenedRun, open_run
from diffcli.runs import checkpoint_of

__all__ = ["Guidance", "GuidedRun", "check_guidance", "class_labels", "even_count", "guide",
           "open_classifier", "parse_classes", "read_classifier"]


def _class_list(names: Sequence[str] | None, k: int) -> str:
    if names and list(names) != [str(i) for i in range(k)]:
        shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:12]))
        return f" ({shown}{', ...' if k > 12 else ''})"
    return ""


def parse_classes(spec: Any, num_classes: int, names: Sequence[str] | None = None) -> list[int]:
    """Class indices from ``classes=``: None or "all" (every class), an int, "a-b" ranges and
    comma lists ("0-4,7"), or a list; each checked against the model's ``num_classes``."""
    if spec is None or str(spec).strip().lower() == "all":
        return list(range(num_classes))
    parts = spec if isinstance(spec, list | tuple) else str(spec).split(",")
    out: list[int] = []
    try:
        for part in (str(p).strip() for p in parts):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), (int(hi) if hi else int(lo)) + 1))
    except ValueError:
        raise DiffcliError(f"bad classes={spec!r}: use a class index (7), a range (0-9), a list "
                           "([1,3,5]) or all") from None
    bad = [c for c in out if not 0 <= c < num_classes]
    if not out or bad:
        raise DiffcliError(f"classes={spec!r}: this model has classes 0-{num_classes - 1}"
                           f"{_class_list(names, num_classes)}")
    return out


def class_labels(classes: Sequence[int], n: int) -> Tensor:
    """Labels (n,) int64 in one block per class, in order: n // k samples of each of the k
    classes, one more for each of the first n % k (one grid row per class when k divides n;
    no class is left out)."""
    k = len(classes)
    if n < k:
        raise DiffcliError(f"n={n} is fewer than the {k} classes asked for: use "
                           f"n={k} or more, or fewer classes")
    per, more = divmod(n, k)
    return torch.tensor([c for j, c in enumerate(classes) for _ in range(per + (j < more))],
                        dtype=torch.long)


def even_count(n: int, k: int) -> int:
    """``n`` rounded up to a multiple of ``k`` (k samples per grid row, one row per class)."""
    return math.ceil(n / k) * k


@dataclass(frozen=True)
class Guidance:
    """The guidance keys of ``sample`` / ``eval-fid`` / ``noise-viz``, as given."""

    scale: float | None = None  # guidance=: classifier-free scale w (None: 1 for a
    # conditional model, i.e. conditional sampling without guidance)
    classes: Any = None  # classes=
    classifier: str | None = None  # classifier=: a checkpoint of `diffcli train task=classifier`
    classifier_scale: float | None = None  # s (None: 1 with a classifier)
    interval: Sequence[float] | None = None  # guidance_interval=[sigma_lo, sigma_hi]
    rescale: float = 0.0  # guidance_rescale= phi
    prompt: Any = None  # prompt=: a caption (or a list of them) for a text-to-image model
    guide: str | None = None  # guide=: autoguidance by this run or checkpoint (scale: guidance=)

    @property
    def used(self) -> bool:
        """Whether any guidance key was given."""
        return any(v is not None for v in (self.scale, self.classes, self.classifier,
                                           self.classifier_scale, self.interval,
                                           self.prompt, self.guide)) or bool(self.rescale)

    @property
    def prompts(self) -> list[str] | None:
        """``prompt=`` as a list of captions (one grid row each); None when not given."""
        if self.prompt is None:
            return None
        items = self.prompt if isinstance(self.prompt, list | tuple) else [self.prompt]
        return [str(p) for p in items]


@dataclass
class GuidedRun:
    """The denoiser to sample from, the classes (None: unconditional) and a description for
    meta.json and folder names."""

    denoiser: Denoiser
    classes: list[int] | None
    class_names: tuple[str, ...] | None
    meta: dict[str, Any]
    tokens: Tensor | None = None  # text-to-image: one row of token ids per prompt (P, L)

    def labels(self, n: int, cyclic: bool = False) -> Tensor | None:
        """(n,) labels, or (n, L) token ids of the prompts: grid rows per class / prompt
        (:func:`class_labels`), or ``cyclic`` (sample i of class ``classes[i % k]``: balanced
        for any n, for FID)."""
        picks = self.indices(n, cyclic)
        return picks if picks is None or self.tokens is None else self.tokens[picks]

    def indices(self, n: int, cyclic: bool = False) -> Tensor | None:
        """(n,) the class (or prompt number) of each sample, as :meth:`labels` lays them out."""
        if self.classes is None:
            return None
        if cyclic:
            return torch.tensor([self.classes[i % len(self.classes)] for i in range(n)])
        return class_labels(self.classes, n)

    def even_seeds(self, seeds: list[int], given: bool) -> tuple[list[int], str | None]:
        """``seeds`` (n of them, over the k classes or prompts) and a one-line note when k does
        not divide n: the seeds ``seeds[-1] + 1, ...`` are added to the next multiple of k, so
        that each class gets a full grid row, unless the seeds were ``given`` one by one (they
        are kept and split as evenly as they go, :func:`class_labels`). Fewer seeds than
        classes are left to :func:`class_labels` to refuse."""
        k, n = len(self.classes or ()), len(seeds)
        if k <= 1 or n % k == 0 or n < k:
            return seeds, None
        what = "prompts" if self.tokens is not None else "classes"
        if given:
            per, more = divmod(n, k)
            return seeds, (f"{n} seeds over {k} {what}: {more} of them get {per + 1} samples, "
                           f"{k - more} get {per}; give a multiple of {k} seeds for one grid "
                           "row each")
        total = even_count(n, k)
        added = range(seeds[-1] + 1, seeds[-1] + 1 + total - n)
        return [*seeds, *added], (f"n={n} rounded up to {total} so each of the {k} {what} gets "
                                  f"{total // k} samples")

    @property
    def tag(self) -> str:
        """A folder-name suffix: "-w3" / "-cls2" / "" (unguided)."""
        parts = []
        if "guidance" in self.meta:
            auto = "ag" if "guide" in self.meta else "w"
            parts.append(f"{auto}{number_text(self.meta['guidance'])}")
        if "classifier_scale" in self.meta:
            parts.append(f"cls{number_text(self.meta['classifier_scale'])}")
        return "".join(f"-{p}" for p in parts)


def read_classifier(path: str | Path, model: LoadedRun) -> LoadedRun:
    """The classifier checkpoint at ``path``, loaded safely, refused in one line unless it is a
    classifier of the same data (dataset, sample shape, classes) and noise schedule as
    ``model``. Nothing is built."""
    run = load_checkpoint(path)
    if not run.kind.classifies:
        raise DiffcliError(f"classifier={path} is {run.kind.noun} checkpoint, not a classifier: "
                           "train one with `diffcli train task=classifier` on the same dataset")
    _check_same_data(run, model)
    if model.continuous is None and run.config.get("schedule") != model.config.get("schedule"):
        raise DiffcliError(f"classifier={path} was trained on x_t of another noise schedule "
                           f"({_schedule(run)}) than the model ({_schedule(model)}): train it "
                           "with the model's schedule= settings")
    return run


def open_classifier(path: str | Path, model: LoadedRun,
                    device: torch.device) -> tuple[nn.Module, LoadedRun]:
    """The noise-aware classifier of ``path`` (:func:`read_classifier`), built in eval mode on
    ``device``."""
    run = read_classifier(path, model)
    info = run.data_info()
    net = build_net(run.config["model"], info.shape, num_classes=run.num_classes)
    try:
        net.load_state_dict(run.weights("net."))
    except RuntimeError as e:
        raise DiffcliError(f"{path}: weights do not fit the configured classifier "
                           f"({str(e).splitlines()[0]})") from None
    net = net.to(device).eval().requires_grad_(False)
    if model.continuous is not None:  # the model's lattice is not the classifier's schedule
        net = AtNoiseLevel(net, run.schedule(), model.schedule())
    return net, run


class AtNoiseLevel(nn.Module):
    """A noise-aware classifier of a DDPM schedule, called at a continuous model's timesteps:
    each timestep of the model's lattice is mapped to the classifier's real-valued timestep of
    the same noise level sigma (the VP-scaled x_t is the same at the same sigma), clamped to
    the classifier's range. (x (B, ...), t (B,)) -> logits (B, K)."""

    def __init__(self, classifier: nn.Module, own: NoiseSchedule, model: NoiseSchedule) -> None:
        super().__init__()
        self.classifier, self.own, self.model = classifier, own, model

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = self.model.sigma_at(t)
        own = torch.tensor([self.own.sigma_to_t(float(s)) for s in sigma.cpu()],
                           dtype=torch.float64, device=x.device)
        return self.classifier(x, own)


def check_guidance(model: LoadedRun, g: Guidance) -> tuple[int, tuple[str, ...] | None] | None:
    """Check the guidance keys ``g`` against the model (and its classifier): the number of
    classes and their names to draw from, or None for plain unconditional sampling. Every
    misuse is one line naming the key and the fix."""
    if g.guide is not None:
        _check_guide_keys(model, g)
    if model.text_encoder is not None:
        _check_text_keys(model, g)
        return None
    if g.prompt is not None:
        raise DiffcliError(f"prompt= needs a text-to-image model (train with text_encoder=small "
                           f"or clip), but {model.path} is not text-conditional")
    k = model.num_classes
    if g.scale is not None and g.scale != 0 and k is None and g.guide is None:
        raise DiffcliError(f"guidance={number_text(g.scale)} needs a class-conditional model "
                           f"(train with conditional=true), but {model.path} is unconditional; for "
                           "an unconditional model use classifier=<ckpt of diffcli train "
                           "task=classifier>")
    if g.classifier_scale is not None and g.classifier is None:
        raise DiffcliError("classifier_scale needs classifier=<ckpt of diffcli train "
                           "task=classifier>")
    if g.classes is not None and k is None and g.classifier is None:
        raise DiffcliError(f"classes={g.classes} needs a class-conditional model (conditional="
                           f"true) or classifier=<ckpt>; {model.path} is unconditional")
    if g.classifier is not None:
        clf = read_classifier(g.classifier, model)
        k, names = clf.num_classes, clf.data_info().class_names
    elif k is None:
        return None
    else:
        names = model.data_info().class_names
    parse_classes(g.classes, int(k or 0), names)
    return int(k or 0), names


def _check_guide_keys(model: LoadedRun, g: Guidance) -> None:
    """guide= takes guidance= as its scale, and a guide that fits (:func:`read_guide`)."""
    if g.scale is None:
        raise DiffcliError(f"guide={g.guide} needs guidance=w, the autoguidance scale (1: the "
                           "model alone; e.g. guidance=2)")
    read_guide(g.guide, model)


def read_guide(path: str | Path, model: LoadedRun) -> LoadedRun:
    """The guide of autoguidance (Karras et al. 2024) at ``path`` (a run folder or checkpoint),
    loaded safely, refused in one line unless it is a diffusion model of the same data, classes,
    objective and noise levels as ``model``; text-to-image models are not supported yet."""
    run = load_checkpoint(checkpoint_of(str(path)))
    if not run.kind.generates:
        raise DiffcliError(f"guide={path} is {run.kind.noun} checkpoint, not a diffusion model: "
                           "guide with an earlier or smaller diffusion run of the same data")
    if model.text_encoder is not None or run.text_encoder is not None:
        raise DiffcliError("guide= (autoguidance) does not take text-to-image models yet: use "
                           "guidance= (classifier-free guidance) with prompt=")
    a, b = run.data_info(), model.data_info()
    if _data_name(run) != _data_name(model) or a.shape != b.shape:
        raise DiffcliError(f"guide={path} was trained on other data (dataset={_data_name(run)}, "
                           f"samples {tuple(a.shape)}) than the model (dataset="
                           f"{_data_name(model)}, samples {tuple(b.shape)})")
    if run.num_classes != model.num_classes:
        raise DiffcliError(f"guide={path} has num_classes={run.num_classes}, the model "
                           f"{model.num_classes}: the guide needs the model's conditioning")
    same = (run.config.get("objective") or {}).get("_target_") == \
        (model.config.get("objective") or {}).get("_target_")
    if not same or (model.continuous is None
                    and run.config.get("schedule") != model.config.get("schedule")):
        raise DiffcliError(f"guide={path} was trained with another objective or noise schedule "
                           "than the model: autoguidance needs the same noise levels")
    if (run.latent is None) != (model.latent is None) or run.latent != model.latent:
        raise DiffcliError(f"guide={path} and the model work in different spaces (pixels or "
                           "another autoencoder's latents)")
    return run


def _autoguide(opened: OpenedRun, g: Guidance, device: torch.device) -> Denoiser:
    """The model guided by ``g.guide`` with scale ``g.scale`` (both conditional on the labels
    when the model is class-conditional)."""
    run, base = opened.run, opened.denoiser
    other = open_run(read_guide(str(g.guide), run), use_ema=True, device=device).denoiser
    if not torch.allclose(other.schedule.alphas_cumprod.double(),
                          base.schedule.alphas_cumprod.double()):
        raise DiffcliError(f"guide={g.guide} samples on other noise levels than the model "
                           "(its objective's sigma range differs): train it with the model's")
    pair = [base, other]
    if run.num_classes is not None:
        pair = [ClassifierFreeGuidance(net=d.net, schedule=d.schedule, prediction=d.prediction,
                                       num_classes=run.num_classes, scale=1.0,
                                       learned_variance=d.learned_variance,
                                       objective=d.objective) for d in pair]
    with user_errors("guidance"):
        return Autoguidance.around(pair[0], pair[1], float(g.scale or 0.0),
                                   interval=tuple(g.interval) if g.interval is not None else None)


def _check_text_keys(model: LoadedRun, g: Guidance) -> None:
    """A text-to-image model takes prompt= and guidance=, not classes or a classifier."""
    if g.classes is not None or g.classifier is not None or g.classifier_scale is not None:
        raise DiffcliError(f"{model.path} is a text-to-image model: ask for images with "
                           "prompt=\"...\" (and guidance=), not classes= or classifier=")
    if g.scale is not None and g.scale != 0 and g.prompts is None:
        raise DiffcliError(f"guidance={number_text(g.scale)} needs a prompt for this "
                           "text-to-image model: prompt=\"a handwritten digit seven\"")
    if g.prompts is not None and not g.prompts:
        raise DiffcliError("prompt= is an empty list: give at least one caption")


def guide_text(opened: OpenedRun, g: Guidance) -> GuidedRun:
    """Classifier-free guidance of a text-to-image model toward ``g.prompts`` with the empty
    prompt as the null condition (Ho & Salimans 2022; Rombach et al. 2022). No prompt: samples
    of the empty prompt (the unconditional model)."""
    _check_text_keys(opened.run, g)
    prompts = g.prompts
    if prompts is None:
        return GuidedRun(opened.denoiser, None, None, {})
    net = opened.network
    base = opened.denoiser
    w = 1.0 if g.scale is None else float(g.scale)
    with user_errors("guidance"):
        denoiser = ClassifierFreeGuidance(
            net=base.net, schedule=base.schedule, prediction=base.prediction, scale=w,
            rescale=float(g.rescale), null=net.null_tokens(),
            learned_variance=base.learned_variance, objective=base.objective,
            interval=tuple(g.interval) if g.interval is not None else None)
    meta = {"guidance": w, "prompts": prompts}
    return GuidedRun(denoiser, list(range(len(prompts))), tuple(prompts), meta,
                     tokens=net.tokenize(prompts))


def _schedule(run: LoadedRun) -> str:
    node = run.config.get("schedule") or {}
    name = str(node.get("_target_", "?")).rsplit(".", 1)[-1].removesuffix("_schedule")
    return f"{name}, T={node.get('num_timesteps', '?')}"


def _data_name(run: LoadedRun) -> str:
    dataset = run.config.get("dataset") or {}
    return str(dataset.get("name", "?"))


def _check_same_data(clf: LoadedRun, model: LoadedRun) -> None:
    a, b = clf.data_info(), model.data_info()
    if _data_name(clf) != _data_name(model) or a.shape != b.shape:
        raise DiffcliError(f"classifier={clf.path} was trained on other data "
                           f"(dataset={_data_name(clf)}, samples {tuple(a.shape)}) than the model "
                           f"(dataset={_data_name(model)}, samples {tuple(b.shape)}): train a "
                           "classifier on the model's dataset")
    if model.num_classes is not None and model.num_classes != clf.num_classes:
        raise DiffcliError(f"classifier={clf.path} has {clf.num_classes} classes, the model "
                           f"{model.num_classes}: they must be trained on the same labels")


def forward_rows(scale: object) -> int:
    """Network rows a sample costs: 2 with a classifier-free guidance scale (one forward of
    2B: conditional and null halves, Ho & Salimans 2022), else 1."""
    return 1 if scale is None else 2


def guide(opened: OpenedRun, g: Guidance, device: torch.device) -> GuidedRun:
    """The guided denoiser of ``opened`` for the keys ``g`` (checked by
    :func:`check_guidance`)."""
    run, base = opened.run, opened.denoiser
    if run.text_encoder is not None:
        if g.guide is not None:
            _check_guide_keys(run, g)  # refused in one line
        return guide_text(opened, g)
    checked = check_guidance(run, g)
    auto = {} if g.guide is None else {"guide": str(g.guide), "guidance": float(g.scale or 0.0)}
    if checked is None:
        return GuidedRun(_autoguide(opened, g, device) if auto else base, None, None, auto)
    k, names = checked
    meta: dict[str, Any] = dict(auto)
    denoiser: Denoiser = base
    if auto:
        denoiser = _autoguide(opened, g, device)
    elif run.num_classes is not None:
        w = 1.0 if g.scale is None else float(g.scale)
        with user_errors("guidance"):
            denoiser = ClassifierFreeGuidance(
                net=base.net, schedule=base.schedule, prediction=base.prediction,
                num_classes=run.num_classes, scale=w, rescale=float(g.rescale),
                learned_variance=base.learned_variance, objective=base.objective,
                interval=tuple(g.interval) if g.interval is not None else None)
        meta["guidance"] = w
    if g.classifier is not None:
        net, _ = open_classifier(g.classifier, run, device)
        s = 1.0 if g.classifier_scale is None else float(g.classifier_scale)
        with user_errors("classifier_scale"):
            denoiser = ClassifierGuidance.around(denoiser, net, s)
        meta |= {"classifier": str(g.classifier), "classifier_scale": s}
    classes = parse_classes(g.classes, k, names)
    meta["classes"] = classes
    return GuidedRun(denoiser, classes, names, meta)
