"""Captions for text-to-image training: one string per image.

Two sources, as the issue of latent diffusion with text asks:

* an image folder's ``metadata.jsonl`` (the Hugging Face ``imagefolder`` convention): one JSON
  object a line with ``file_name`` (the image's path relative to the folder holding the
  metadata file) and ``text`` (its caption); every image needs one;
* for a labelled dataset, a template filled in with each item's class: ``{name}`` is the class
  name ("7", "cat"), ``{word}`` the name spelled out when it is a number ("seven"), e.g.
  ``"a handwritten digit {word}"``.

:class:`CaptionedDataset` yields ``(x, caption)``; the default collation gives a batch
``(x (B, ...), captions: list[str])``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from diffcli.data.labels import unlabelled
from diffcli.data.vision import find_images, sample_shape
from diffcli.errors import DiffcliError

__all__ = ["METADATA_FILE", "CaptionedDataset", "fill_template", "folder_captions",
           "number_word", "read_metadata", "template_captions"]

METADATA_FILE = "metadata.jsonl"
_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
          "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()


def number_word(name: str) -> str:
    """"7" -> "seven" for the numbers 0..20; any other name as it is."""
    return _WORDS[int(name)] if name.isdigit() and int(name) < len(_WORDS) else name


def fill_template(template: str, name: str) -> str:
    """The caption of an item of class ``name``: ``{name}`` and ``{word}`` filled in."""
    try:
        return template.format(name=name, word=number_word(name))
    except (KeyError, IndexError, ValueError) as e:
        raise DiffcliError(f"caption template {template!r} is not usable ({e!r}); use the "
                           "placeholders {name} (class name) and {word} (number spelled out), "
                           'e.g. "a handwritten digit {word}"') from None


def template_captions(labels: Sequence[int], class_names: Sequence[str],
                      template: str) -> list[str]:
    """One caption per label: the template filled with its class name."""
    filled = [fill_template(template, str(name)) for name in class_names]
    return [filled[int(y)] for y in labels]


def read_metadata(path: Path) -> dict[str, str]:
    """``file_name -> text`` of a ``metadata.jsonl``; one line naming the file and line number for
    a line that is not a JSON object with string ``file_name`` and ``text``."""
    captions: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise DiffcliError(f"{where} is not JSON ({e.msg}); each line must be "
                               '{"file_name": "...", "text": "..."}') from None
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            raise DiffcliError(f"{where} has no \"file_name\"; each line must be "
                               '{"file_name": "...", "text": "..."}')
        if not isinstance(entry.get("text"), str):
            raise DiffcliError(f"{where} ({entry['file_name']}) has no \"text\" caption; add "
                               '"text": "<caption>" to it')
        captions[Path(entry["file_name"]).as_posix()] = entry["text"]
    return captions


def folder_captions(root: str | Path) -> list[str]:
    """The caption of every image under ``root`` in the dataset's order (the sorted walk of
    :func:`~diffcli.data.vision.find_images`), from ``root/metadata.jsonl``."""
    root = Path(root).expanduser()
    path = root / METADATA_FILE
    if not path.is_file():
        raise DiffcliError(f"text conditioning needs captions, but {root} has no {METADATA_FILE} "
                           '(one line per image: {"file_name": "a.png", "text": "..."}); or use '
                           "a labelled dataset with dataset.caption=<template>")
    captions = read_metadata(path)
    out = []
    for image in find_images(root):
        key = image.relative_to(root).as_posix()
        if key not in captions:
            raise DiffcliError(f"image {image} has no caption in {path}; add a line "
                               f'{{"file_name": "{key}", "text": "..."}}')
        out.append(captions[key])
    return out


class CaptionedDataset(Dataset):
    """Items ``(x, caption)``: the (unlabelled) sample of ``dataset`` and its caption string."""

    def __init__(self, dataset: Dataset, captions: Sequence[str]) -> None:
        self.dataset = unlabelled(dataset)
        if len(captions) != len(self.dataset):
            raise DiffcliError(f"{len(captions)} captions for {len(self.dataset)} images")
        self.captions = list(captions)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        return self.dataset[index], self.captions[index]

    @property
    def data_shape(self) -> tuple[int, ...]:
        return sample_shape(self.dataset)
