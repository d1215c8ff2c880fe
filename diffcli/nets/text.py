"""Text encoders and the text-to-image denoiser (Rombach et al. 2022, Sec. 3.3).

Latent / Stable Diffusion conditions its U-Net on ``tau_theta(y)``, a token sequence
computed from the prompt ``y`` by a text encoder, through cross-attention (see
:mod:`diffcli.nets.attention`). Two encoders are provided:

* :class:`SmallTextEncoder`: a small transformer trained from scratch jointly with the
  U-Net (as LDM's own text-to-image model, Sec. 4.3.1), over the vocabulary-free
  :class:`WordTokenizer`; it needs no download.
* :class:`CLIPTextEncoder`: a frozen CLIP text transformer (Radford et al. 2021) read from
  a local folder, as Stable Diffusion uses it.

:class:`TextConditionedNet` wraps a U-Net and an encoder into a denoiser ``net(x_t, t, y)``
whose ``y`` is a ``(B, L)`` tensor of token ids; the empty prompt is the unconditional
input of classifier-free guidance (Ho & Salimans 2022), as in Stable Diffusion.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffcli.nets.attention import TransformerBlock

__all__ = [
    "BOS",
    "PAD",
    "CLIPTextEncoder",
    "SmallTextEncoder",
    "TextConditionedNet",
    "WordTokenizer",
]

PAD, BOS = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


def _prompt_list(prompts: Sequence[str], who: str) -> list[str]:
    """``prompts`` as a list of strings; a bare string or a non-string is refused."""
    if isinstance(prompts, str):
        raise ValueError(f"{who} takes a list of prompts, got one string; wrap it: [{prompts!r}]")
    out = list(prompts)
    bad = [p for p in out if not isinstance(p, str)]
    if bad:
        raise ValueError(f"{who} takes prompts as strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    return out


class WordTokenizer:
    """Deterministic word-hash tokenizer needing no vocabulary file (offline use, tests).

    Words are ``re.findall(r"[a-z0-9]+", prompt.lower())``; each maps to
    ``2 + crc32(word) % (vocab_size - 2)`` (ids 0 and 1 are :data:`PAD` and :data:`BOS`).
    A prompt becomes ``[BOS, ids..., PAD...]`` truncated / padded to ``max_length``;
    the empty prompt is ``[BOS, PAD, ...]``.

    Args:
        vocab_size: number of token ids, at least 3.
        max_length: tokens per prompt, BOS included, at least 1.
    """

    def __init__(self, vocab_size: int = 4096, max_length: int = 16) -> None:
        if vocab_size < 3 or max_length < 1:
            raise ValueError(f"WordTokenizer needs vocab_size >= 3 and max_length >= 1, got "
                             f"{vocab_size} and {max_length}")
        self.vocab_size = vocab_size
        self.max_length = max_length

    def word_id(self, word: str) -> int:
        """Token id of one lower-case word."""
        return 2 + zlib.crc32(word.encode("utf-8")) % (self.vocab_size - 2)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of one prompt, exactly ``max_length`` long."""
        ids = [BOS] + [self.word_id(w) for w in _WORD.findall(prompt.lower())]
        ids = ids[: self.max_length]
        return ids + [PAD] * (self.max_length - len(ids))

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        """Token ids ``(B, max_length)`` long for ``B`` prompts."""
        rows = [self.encode(p) for p in _prompt_list(prompts, "WordTokenizer")]
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.max_length)


def _check_tokens(tokens: Tensor, max_length: int, vocab_size: int | None, who: str) -> None:
    """Raise ``ValueError`` unless ``tokens`` are integer ids ``(B, L)``, ``L <= max_length``."""
    if tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"{who} expects token ids of shape (B, L) (integer), got {tokens.dtype} "
                         f"{tuple(tokens.shape)}; make them with tokenize(prompts)")
    if tokens.shape[1] > max_length:
        raise ValueError(f"{who} takes at most {max_length} tokens per prompt, got "
                         f"{tokens.shape[1]}; make them with tokenize(prompts)")
    if vocab_size is not None and tokens.numel() and not 0 <= int(tokens.min()) <= int(
            tokens.max()) < vocab_size:
        raise ValueError(f"{who} token ids must lie in 0..{vocab_size - 1}; make them with "
                         "tokenize(prompts) of the same encoder")


class SmallTextEncoder(nn.Module):
    """A small transformer text encoder ``tau_theta`` trained with the U-Net (Rombach et al.
    2022, Sec. 3.3: "tau_theta ... implemented as a transformer").

    Token + learned position embeddings ``(B, L, width)`` -> ``depth`` pre-norm
    :class:`~diffcli.nets.attention.TransformerBlock` s (self-attention that ignores
    padding) -> LayerNorm. Tokens come from a :class:`WordTokenizer`.

    Args:
        vocab_size: tokenizer vocabulary size.
        max_length: tokens per prompt (BOS included).
        width: token width, the U-Net's ``context_dim``.
        depth: transformer blocks.
        heads: attention heads; must divide ``width``.
    """

    frozen: bool = False

    def __init__(self, *, vocab_size: int = 4096, max_length: int = 16, width: int = 128,
                 depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        if heads < 1 or width % heads or depth < 0:
            raise ValueError(f"SmallTextEncoder needs heads dividing width and depth >= 0, got "
                             f"width={width}, heads={heads}, depth={depth}")
        self.tokenizer = WordTokenizer(vocab_size, max_length)
        self.width = width
        self.max_length = max_length
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(0.01 * torch.randn(max_length, width))
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads=heads, head_dim=width // heads, cross_attention=False)
            for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(width)

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        """Token ids ``(B, max_length)`` long, on the CPU."""
        return self.tokenizer(prompts)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens`` ``(B, L)`` -> ``(context (B, L, width), mask (B, L) bool)``.

        ``mask`` is ``tokens != PAD``: the padding the U-Net's cross-attention ignores.
        """
        _check_tokens(tokens, self.max_length, self.tokenizer.vocab_size, "SmallTextEncoder")
        tokens = tokens.to(self.token_embed.weight.device)
        mask = tokens != PAD  # (B, L)
        h = self.token_embed(tokens) + self.pos_embed[: tokens.shape[1]]  # (B, L, width)
        for block in self.blocks:
            h = block(h, self_mask=mask)  # (B, L, width)
        return self.final_norm(h), mask


def _clip_error(path: str) -> ValueError:
    """The one-line error for a folder that holds no usable CLIP text model."""
    return ValueError(
        f"text_encoder.path={path} is not a folder with a CLIP text model (config.json, "
        "weights, tokenizer files); download one, e.g. openai/clip-vit-base-patch32, and pass "
        "its local path"
    )


def _load_clip(path: str) -> tuple[Any, Any]:
    """``(CLIPTextModel, CLIPTokenizer)`` from a local folder, or the diffusers layout with
    ``text_encoder/`` and ``tokenizer/`` subfolders; never touches the network."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise _clip_error(path)
    model_dir, tok_dir = root, root
    if (root / "text_encoder").is_dir():
        model_dir = root / "text_encoder"
        tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as err:
        raise ValueError(f"CLIPTextEncoder needs the transformers package "
                         f"(pip install transformers) to read {path}") from err
    try:
        model = CLIPTextModel.from_pretrained(str(model_dir), local_files_only=True,
                                              use_safetensors=True)
        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError, ...
        raise _clip_error(path) from err
    return model, tokenizer


class CLIPTextEncoder(nn.Module):
    """Frozen CLIP text transformer (Radford et al. 2021) as Stable Diffusion's ``tau``.

    Read with ``transformers`` from a local folder (``config.json``, weights, tokenizer
    files) or a diffusers pipeline folder (``text_encoder/`` and ``tokenizer/``). The
    model is frozen (``requires_grad_(False)``, ``eval()``) and kept out of this module's
    ``state_dict``: checkpoints do not carry CLIP's weights. It moves to the tokens'
    device on first use.

    Args:
        path: the local folder.
        max_length: tokens per prompt (CLIP: 77), at most the model's positions.
    """

    frozen: bool = True

    def __init__(self, path: str | None = None, *, max_length: int = 77) -> None:
        if path is None:
            raise ValueError("the CLIP text encoder needs text_encoder.path=<a local folder with a "
                             "CLIP text model and its tokenizer>, e.g. a download of "
                             "openai/clip-vit-large-patch14")
        super().__init__()
        model, tokenizer = _load_clip(str(path))
        positions = int(model.config.max_position_embeddings)
        if not 1 <= max_length <= positions:
            raise ValueError(f"CLIPTextEncoder max_length={max_length} must be in "
                             f"1..{positions} (the model's positions)")
        model.requires_grad_(False)
        model.eval()
        self.__dict__["clip_model"] = model  # not a submodule: out of state_dict / parameters
        self.tokenizer = tokenizer
        self.path = str(path)
        self.max_length = max_length
        self.width = int(model.config.hidden_size)
        self.vocab_size = int(model.config.vocab_size)

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        """Token ids ``(B, max_length)`` long (padded to ``max_length``, truncated)."""
        batch = self.tokenizer(_prompt_list(prompts, "CLIPTextEncoder"), padding="max_length",
                               max_length=self.max_length, truncation=True, return_tensors="pt")
        return batch["input_ids"].to(torch.long)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens`` ``(B, L)`` -> ``(last_hidden_state (B, L, width), mask (B, L))``.

        The mask is all ``True``: SD attends to the whole padded sequence.
        """
        _check_tokens(tokens, self.max_length, self.vocab_size, "CLIPTextEncoder")
        model = self.__dict__["clip_model"]
        if model.device != tokens.device:
            model.to(tokens.device)
        with torch.no_grad():
            hidden = model(input_ids=tokens).last_hidden_state  # (B, L, width)
        return hidden, torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)


class TextConditionedNet(nn.Module):
    """A text-to-image denoiser: ``net(x_t, t, y)`` with ``y`` = token ids ``(B, L)`` long.

    ``context, mask = text_encoder(y)``; ``unet(x_t, t, context=context,
    context_mask=mask)`` (Rombach et al. 2022, Sec. 3.3). ``y=None`` stands for the empty
    prompt for every sample, the unconditional input of classifier-free guidance (Ho &
    Salimans 2022) as in Stable Diffusion. Frozen encoders run under ``torch.no_grad``.

    Args:
        unet: a :class:`~diffcli.nets.unet.UNet` built with ``context_dim``.
        text_encoder: :class:`SmallTextEncoder` or :class:`CLIPTextEncoder` (anything with
            ``width``, ``tokenize`` and ``forward(tokens) -> (context, mask)``).
    """

    conditioning = "text"
    num_classes = None

    def __init__(self, unet: nn.Module, text_encoder: nn.Module) -> None:
        super().__init__()
        context_dim = getattr(unet, "context_dim", None)
        width = getattr(text_encoder, "width", None)
        if context_dim is None or context_dim != width:
            raise ValueError(f"TextConditionedNet: the U-Net's context_dim={context_dim} must "
                             f"equal the text encoder's width={width}; "
                             f"set unet context_dim={width}")
        self.unet = unet
        self.text_encoder = text_encoder
        self.learn_sigma = bool(getattr(unet, "learn_sigma", False))
        self.in_channels = unet.in_channels
        self.out_channels = unet.out_channels

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        """Token ids ``(B, L)`` long for ``B`` prompts (the encoder's tokenizer)."""
        return self.text_encoder.tokenize(prompts)

    def null_tokens(self) -> Tensor:
        """The empty prompt's tokens ``(L,)``: classifier-free guidance's null input."""
        return self.tokenize([""])[0]

    def encode_text(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Token ids ``(B, L)`` -> ``(context (B, L, width), mask (B, L) bool)``."""
        if getattr(self.text_encoder, "frozen", False):
            with torch.no_grad():
                return self.text_encoder(y)
        return self.text_encoder(y)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Predict from ``x`` ``(B, C, H, W)`` at ``t`` ``(B,)`` given prompt tokens ``y``.

        ``y`` ``(B, L)`` long, or ``None`` for the empty prompt. Returns
        ``(B, out_channels, H, W)``.
        """
        if y is None:
            y = self.null_tokens().to(x.device).expand(x.shape[0], -1)
        elif y.ndim != 2 or y.shape[0] != x.shape[0]:
            raise ValueError(f"TextConditionedNet expects token ids of shape ({x.shape[0]}, L), "
                             f"got {tuple(y.shape)}; make them with net.tokenize(prompts)")
        context, mask = self.encode_text(y.to(x.device))
        return self.unet(x, t, context=context, context_mask=mask)
