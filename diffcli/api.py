"""diffcli from Python: load a trained model, then sample, score and noise with it.

::

    import diffcli

    pipe = diffcli.load("outputs/2026-11-26/10-00-00")   # a run folder, a .ckpt, an exported
                                                          # .safetensors or a diffusers folder
    images = pipe.sample(16, sampler="ddim", steps=50)     # (16, C, H, W) uint8, seeds 0..15
    pils = pipe.sample(8, sampler="dpmpp_2m", steps=20, output="pil")
    bits = pipe.nll(x0)                                     # bits/dim per item (variational bound)
    x_t = pipe.noise(x0, t=500)                             # a draw of q(x_t | x_0)

The command line's workflows use the same functions (:func:`draw` for ``diffcli sample``,
:func:`vlb` for ``diffcli eval-nll``), so a notebook and the CLI give the same numbers for the
same seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor

from diffcli.components import option
from diffcli.console import progress
from diffcli.diffusion.denoiser import Denoiser
from diffcli.diffusion.generate import Trajectory, generate_batches, num_steps, to_uint8
from diffcli.diffusion.likelihood import nll_vlb, stratified_terms
from diffcli.diffusion.process import q_sample
from diffcli.diffusion.samplers import Sampler
from diffcli.errors import DiffcliError
from diffcli.guided_run import Guidance, GuidedRun, forward_rows, guide
from diffcli.restore import (
    OpenedRun,
    check_sampling_fits,
    make_sampler,
    nll_method,
    open_run,
    pick_device,
    settle_sampler,
)
from diffcli.runs import checkpoint_of

console = Console(stderr=True, soft_wrap=True)
OUTPUTS = ("uint8", "float", "pil")
DEFAULT_SAMPLER = "auto"  # the default of `diffcli sample` (conf/sample.yaml)

def draw_batches(sampler: Sampler, opened: OpenedRun, seeds: Sequence[int], batch_size: int,
                 device: torch.device, trajectory: Trajectory | None = None, show: bool = True,
                 denoiser: Denoiser | None = None,
                 labels: Tensor | None = None) -> Iterator[Tensor]:
    """Sample one item per seed with a progress bar (``denoiser``: a guided one, default the
    run's; ``labels`` (N,): each seed's class, or (N, L) its prompt's tokens), ``batch_size``
    at a time, a latent model's samples decoded to images: (B, *shape) float32 CPU batches in
    seed order, images in [-1, 1]. Memory holds one batch, whatever ``len(seeds)`` is."""
    denoiser = denoiser or opened.denoiser
    total = num_steps(sampler, denoiser) * math.ceil(len(seeds) / batch_size)
    with progress("sampling", total, console, show, unit="steps") as bar:
        for z in generate_batches(sampler, denoiser, opened.sample_shape, list(seeds),
                                  batch_size, device, trajectory=trajectory,
                                  on_step=bar.advance, labels=labels):
            yield opened.decode(z, batch_size)


def draw(sampler: Sampler, opened: OpenedRun, seeds: Sequence[int], batch_size: int,
         device: torch.device, trajectory: Trajectory | None = None, show: bool = True,
         denoiser: Denoiser | None = None, labels: Tensor | None = None) -> Tensor:
    """All of :func:`draw_batches` in one tensor: (N, *shape) float32 on the CPU."""
    return torch.cat(list(draw_batches(sampler, opened, seeds, batch_size, device, trajectory,
                                       show, denoiser, labels)))


def resolve_options(decoder: str, variance: str, kind: str, learned: bool,
                    where: Path | str) -> tuple[str, str]:
    """(decoder, variance) of the variational bound with ``auto`` resolved, checked against the
    model's data ``kind`` and whether it ``learned`` its variances; one line naming the key
    otherwise."""
    if decoder == "auto":
        decoder = "discrete" if kind == "image" else "continuous"
    if decoder == "discrete" and kind != "image":
        what = "latents (latent diffusion)" if kind == "latent" else "2-D points"
        raise DiffcliError(f"decoder=discrete is the 256-bin decoder of 8-bit images, but "
                           f"{where} models {what}: use decoder=continuous (or auto)")
    if variance == "learned" and not learned:
        raise DiffcliError(f"variance=learned, but {where} has no learned variances (train "
                           "with model.learn_sigma=true); use variance=beta or beta_tilde")
    if variance == "auto":
        variance = "learned" if learned else "beta_tilde"
    return decoder, variance


def vlb_timesteps(num_timesteps: int,
                  steps: int | None) -> tuple[list[int] | None, list[float] | None]:
    """All T terms (None, None), or ``steps`` terms: t = 0 and one timestep per geometric
    stratum with the stratum's length as weight (:func:`stratified_terms`; strided terms
    underestimate the bound, whose terms fall off like 1 / t)."""
    if steps is None or steps >= num_timesteps:
        return None, None
    return stratified_terms(num_timesteps, max(1, steps - 1))


def vlb(opened: OpenedRun, x0: Tensor, kind: str, decoder: str, variance: str, *,
        steps: int | None = None, seed: int = 0, batch_size: int = 64,
        device: torch.device | None = None, show: bool = True) -> tuple[Tensor, Tensor, list[int]]:
    """The variational bound (Ho et al. 2020, eq. 5) of ``x0`` (N, ...) as the model sees it
    (``kind`` "image", "points" or "latent"), with ``decoder`` / ``variance`` resolved
    (:func:`resolve_options`): (bits/dim per item (N,), mean L_t per evaluated term (K,) in
    bits/dim, their t)."""
    device = device or torch.device("cpu")
    T = opened.schedule.num_timesteps
    timesteps, weights = vlb_timesteps(T, steps)
    den = opened.denoiser
    predict = den if variance == "learned" else (  # a fixed variance: drop the learned one
        lambda x_t, t: den(x_t, t)._replace(var_frac=None))
    fixed = "beta_tilde" if variance == "learned" else variance
    per_item, per_term, ts = [], [], []
    gen = torch.Generator().manual_seed(int(seed))
    batches = range(0, len(x0), int(batch_size))
    total = len(batches) * len(timesteps or range(T))
    with progress("VLB terms", total, console, show) as bar, torch.inference_mode():
        for start in batches:
            batch = x0[start:start + int(batch_size)].to(device)
            out = nll_vlb(predict, opened.schedule, batch, timesteps=timesteps, generator=gen,
                          decoder=decoder, fixed_variance=fixed, clip_x0=kind == "image",
                          on_step=lambda i, n: bar.advance(), weights=weights)
            per_item.append(out["bpd"].cpu())
            per_term.append(out["terms"].cpu() * len(batch))
            ts = out["timesteps"].tolist()
    dims = x0[0].numel()
    terms = torch.stack(per_term).sum(0) / len(x0) / (dims * math.log(2))
    return torch.cat(per_item), terms, ts


class Pipeline:
    """A trained diffusion model, ready to use from Python (see :func:`load`)."""

    def __init__(self, opened: OpenedRun, device: torch.device) -> None:
        self.opened = opened
        self.device = device

    @property
    def kind(self) -> str:
        """"image" or "points"."""
        return self.opened.info.kind

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample's shape, e.g. (3, 32, 32)."""
        return tuple(self.opened.info.shape)

    @property
    def num_classes(self) -> int | None:
        """The classes of a class-conditional model (None: unconditional)."""
        return self.opened.run.num_classes

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.opened.info.class_names if self.num_classes else None

    def __repr__(self) -> str:
        run = self.opened.run
        return (f"Pipeline({self.opened.ckpt}, {self.kind} {self.shape}, step "
                f"{run.global_step}, predicts {run.prediction}, {self.opened.weights} weights)")

    def sample(self, n: int = 16, *, sampler: str | dict[str, Any] = DEFAULT_SAMPLER,
               steps: int | None = None, seeds: Iterable[int] | None = None, seed: int = 0,
               batch_size: int = 64, guidance: float | None = None, classes: Any = None,
               prompt: str | Sequence[str] | None = None, classifier: str | None = None,
               classifier_scale: float | None = None, clip_denoised: bool | None = None,
               output: str = "uint8", progress: bool = False, guide: str | None = None) -> Any:
        """Draw samples: one per seed (``seeds``, default ``seed .. seed + n - 1``; each
        sample depends on its seed only), with ``sampler`` (a name of ``conf/sampler/``:
        dpmpp_3m (default, as ``diffcli sample``), ddpm, ddim, dpmpp_2m, dpmpp_2m_sde, unipc,
        euler, heun, restart; or a sampler config dict) and ``steps``.

        ``guidance``/``classes``/``prompt``/``classifier``/``guide`` (autoguidance by a weaker
        run, scale ``guidance``) guide as ``diffcli sample`` does.
        ``output``: "uint8" images (N, C, H, W) (points: float (N, 2)), "float" in [-1, 1],
        or "pil" (a list of PIL images). Memory holds the result and one batch; for more
        samples than fit at once, iterate :meth:`sample_batches`.

        With ``classes`` (or several prompts) the samples come in one block per class, in order;
        ``n`` is rounded up to a multiple of the number of classes so that each gets as many
        (said in one line on stderr), while ``seeds`` given one by one are kept as they are."""
        g = Guidance(scale=guidance, classes=classes, classifier=classifier,
                     classifier_scale=classifier_scale, prompt=prompt, guide=guide)
        smp, guided, seeds = self._plan(n, seeds, seed, batch_size, output, sampler, steps,
                                        clip_denoised, g)
        parts = self._draw(smp, guided, seeds, batch_size, output, progress)
        if output == "pil":
            return [img for part in parts for img in part]
        first = next(parts)
        out = torch.empty(len(seeds), *first.shape[1:], dtype=first.dtype)
        out[:len(first)] = first
        done = len(first)
        for part in parts:  # filled batch by batch: no second copy of all samples
            out[done:done + len(part)] = part
            done += len(part)
        return out

    def sample_batches(self, n: int = 16, *, sampler: str | dict[str, Any] = DEFAULT_SAMPLER,
                       steps: int | None = None, seeds: Iterable[int] | None = None,
                       seed: int = 0, batch_size: int = 64, guidance: float | None = None,
                       classes: Any = None, prompt: str | Sequence[str] | None = None,
                       classifier: str | None = None, classifier_scale: float | None = None,
                       clip_denoised: bool | None = None, output: str = "uint8",
                       progress: bool = False, guide: str | None = None) -> Iterator[Any]:
        """:meth:`sample` one batch at a time (same arguments): yields the samples of
        ``batch_size`` seeds after another, in seed order, as ``output`` asks; memory holds
        one batch, so any number of samples can be streamed to disk."""
        g = Guidance(scale=guidance, classes=classes, classifier=classifier,
                     classifier_scale=classifier_scale, prompt=prompt, guide=guide)
        plan = self._plan(n, seeds, seed, batch_size, output, sampler, steps, clip_denoised, g)
        yield from self._draw(*plan, batch_size, output, progress)

    def _plan(self, n: int, seeds: Iterable[int] | None, seed: int, batch_size: int,
              output: str, sampler: str | dict[str, Any], steps: int | None,
              clip_denoised: bool | None, g: Guidance) -> tuple[Sampler, GuidedRun, list[int]]:
        """The sampler, the guided run and the seeds (evenly over the classes) of a call, each
        argument checked."""
        if output not in OUTPUTS:
            raise DiffcliError(f"output={output!r}: use one of {', '.join(OUTPUTS)}")
        picked = self._seeds(n, seeds, seed)
        if not picked:
            raise DiffcliError(f"no seeds to sample (n={n}): ask for n >= 1")
        check_sampling_fits(self.opened.run, batch_size, self.device,
                            rows_per_item=forward_rows(g.scale))
        node = option("sampler", sampler) if isinstance(sampler, str) else dict(sampler)
        clip = self.kind == "image" if clip_denoised is None else bool(clip_denoised)
        smp, _ = make_sampler(node, self.opened.schedule, steps=steps, clip_denoised=clip,
                              run=self.opened.run)
        smp, notes = settle_sampler(smp, self.opened.denoiser)
        for line in notes:
            console.print(f"[yellow]note[/]: {line}")
        guided = guide(self.opened, g, self.device)
        picked, note = guided.even_seeds(picked, given=seeds is not None)
        if note:
            console.print(f"[yellow]note[/]: {note}")
        return smp, guided, picked

    def _draw(self, smp: Sampler, guided: GuidedRun, seeds: list[int], batch_size: int,
              output: str, progress: bool) -> Iterator[Any]:
        """The samples of a :meth:`_plan`, batch by batch, as ``output`` asks."""
        for x in draw_batches(smp, self.opened, seeds, batch_size, self.device, show=progress,
                              denoiser=guided.denoiser, labels=guided.labels(len(seeds))):
            yield _as(x, output, self.kind)

    @staticmethod
    def _seeds(n: int, seeds: Iterable[int] | None, seed: int) -> list[int]:
        return list(range(seed, seed + n)) if seeds is None else [int(s) for s in seeds]

    def nll(self, x0: Tensor, *, steps: int | None = None, seed: int = 0, batch_size: int = 64,
            decoder: str = "auto", variance: str = "auto", progress: bool = False) -> Tensor:
        """Bits/dim per item (N,) of ``x0`` (images in [-1, 1], (N, C, H, W)) under the
        variational bound, over all T terms or ``steps`` stratified ones (as ``diffcli
        eval-nll method=vlb``); the DDPM chain's only (a model of objective=edm|flow has no
        such bound: DiffcliError)."""
        nll_method("vlb", self.opened.run)
        kind = "latent" if self.opened.codec is not None else self.kind
        if self.opened.codec is not None:
            x0 = self.opened.codec.encode_batches(x0.float())
        decoder, variance = resolve_options(decoder, variance, kind,
                                            self.opened.run.learned_variance, self.opened.ckpt)
        bpd, _, _ = vlb(self.opened, x0.float(), kind, decoder, variance, steps=steps,
                        seed=seed, batch_size=batch_size, device=self.device, show=progress)
        return bpd

    def noise(self, x0: Tensor, t: int | Tensor, seed: int = 0) -> Tensor:
        """A draw of q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al. 2020, eq. 4):
        ``x0`` (N, ...), ``t`` an int or (N,) ints; the noise from ``seed``."""
        t = torch.as_tensor(t, dtype=torch.long).expand(len(x0)).clone()
        gen = torch.Generator().manual_seed(int(seed))
        eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
        return q_sample(self.opened.schedule, x0, t, eps)


def _as(x: Tensor, output: str, kind: str) -> Any:
    """Samples (N, ...) in [-1, 1] as ``output`` asks."""
    if output == "float" or kind != "image":
        return x
    images = to_uint8(x)
    if output == "uint8":
        return images
    from torchvision.transforms.functional import to_pil_image

    return [to_pil_image(img) for img in images]


def load(path: str | Path, *, device: str = "cpu", use_ema: bool = True,
         compile: bool = False) -> Pipeline:
    """A trained model from ``path``: a run folder (its last.ckpt), a checkpoint, an exported
    ``.safetensors`` (with its JSON sidecar) or a diffusers folder; EMA weights when present
    (``use_ema``). Loading is as safe as the CLI's: no pickled code runs."""
    dev = pick_device(device)
    return Pipeline(open_run(checkpoint_of(path), use_ema=use_ema, device=dev,
                             compile=compile), dev)


__all__ = ["Pipeline", "draw", "load", "resolve_options", "vlb",
           "vlb_timesteps"]
