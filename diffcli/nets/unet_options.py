"""The options of :class:`~diffcli.nets.unet.UNet` resolved and checked, before any layer exists.

* :func:`level_resolutions` / :func:`attention_level_set`: which levels (0 = full resolution)
  get self-attention or spatial transformers, from pixel sizes or level indices;
* :func:`resolve_context`: ``mid_transformer`` and the transformer levels against
  ``context_dim`` (text conditioning, Rombach et al. 2022, Sec. 3.3);
* :func:`resolve_out_channels`: the output channels, ``2C`` with learned variances (Nichol &
  Dhariwal 2021, Sec. 3.1);
* :func:`image_channels_and_size`: ``(C, H)`` of a sample shape ``(C, H, W)``.

Each raises a one-line ``ValueError`` naming the option to change.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["attention_level_set", "image_channels_and_size", "level_resolutions",
           "resolve_context", "resolve_out_channels"]


def level_resolutions(image_size: int, num_levels: int) -> list[int]:
    """Feature-map side length at each level: ``image_size`` padded to a multiple of
    ``2 ** (num_levels - 1)`` (:meth:`UNet.pad`), then halved per level."""
    m = 2 ** (num_levels - 1)
    sizes = [-(-image_size // m) * m]
    for _ in range(num_levels - 1):
        sizes.append(-(-sizes[-1] // 2))
    return sizes


def attention_level_set(
    num_levels: int,
    attention_resolutions: Sequence[int],
    attention_levels: Sequence[int] | None,
    image_size: int | None,
    name: str = "attention",
) -> frozenset[int]:
    """Translate ``attention_resolutions`` (pixels) or ``attention_levels`` to level indices.

    ``name`` is the option prefix used in error messages (``"transformer"`` for the
    spatial transformers' ``transformer_resolutions`` / ``transformer_levels``).

    Raises:
        ValueError: both are given; resolutions without ``image_size``; a resolution the
            net does not have; a level outside ``0 .. num_levels - 1``.
    """
    resolutions = [int(r) for r in attention_resolutions]
    levels = [int(lv) for lv in attention_levels or ()]
    if resolutions and levels:
        raise ValueError(
            f"UNet: give {name}_resolutions or {name}_levels, not both "
            f"(got {resolutions} and {levels}); set the other to null / []"
        )
    if resolutions:
        if image_size is None:
            raise ValueError(
                f"UNet: {name}_resolutions={resolutions} needs image_size (the input "
                "height in pixels) to find the levels; pass image_size or use "
                f"{name}_levels (0 = full resolution)"
            )
        sizes = level_resolutions(image_size, num_levels)
        missing = [r for r in resolutions if r not in sizes]
        if missing:
            raise ValueError(
                f"UNet: {name} resolution(s) {missing} not among this net's resolutions "
                f"{sizes} (image_size={image_size}, {num_levels} levels)"
            )
        return frozenset(sizes.index(r) for r in resolutions)
    bad = [lv for lv in levels if not 0 <= lv < num_levels]
    if bad:
        raise ValueError(
            f"UNet: {name} level(s) {bad} out of range for {num_levels} levels "
            f"(valid: 0..{num_levels - 1}, 0 = full resolution)"
        )
    return frozenset(levels)


def resolve_context(context_dim: int | None, levels: frozenset[int],
                    mid_transformer: bool | None) -> bool:
    """Resolve ``mid_transformer`` and check it and ``levels`` against ``context_dim``."""
    if mid_transformer is None:
        mid_transformer = bool(levels)
    wanted = bool(levels) or bool(mid_transformer)
    if wanted and context_dim is None:
        raise ValueError("UNet: spatial transformers (transformer_levels / transformer_resolutions "
                         "/ mid_transformer) need context_dim; set context_dim to the text "
                         "encoder's width")
    if context_dim is not None and not wanted:
        raise ValueError(f"UNet: context_dim={context_dim} but no spatial transformer; set "
                         "transformer_levels or transformer_resolutions (or mid_transformer=true)")
    if context_dim is not None and context_dim < 1:
        raise ValueError(f"UNet context_dim must be >= 1 or None, got {context_dim}")
    return bool(mid_transformer)


def resolve_out_channels(in_channels: int, out_channels: int | None, learn_sigma: bool) -> int:
    """``out_channels``, defaulting to C (or 2C with ``learn_sigma``: prediction + variance)."""
    if out_channels is None:
        return 2 * in_channels if learn_sigma else in_channels
    if learn_sigma and out_channels % 2:
        raise ValueError(f"UNet with learn_sigma=true needs an even out_channels (prediction "
                         f"and variance halves), got {out_channels}")
    return out_channels


def image_channels_and_size(data_shape: Sequence[int], image_size: int | None) -> tuple[int, int]:
    """(in_channels, image_size) of a (C, H, W) sample shape; points are refused."""
    if len(data_shape) != 3:
        raise ValueError(f"the U-Net takes images (C, H, W), but the data are "
                         f"{'points of shape' if len(data_shape) == 1 else 'of shape'} "
                         f"{tuple(data_shape)}; use the MLP (model=mlp) for points")
    return int(data_shape[0]), int(data_shape[1]) if image_size is None else image_size
