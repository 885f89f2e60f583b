"""The bundled real-text corpus as an in-memory ``datasets.Dataset`` (no hub access)."""

from __future__ import annotations

import gzip
import json
import random
import zlib
from pathlib import Path
from typing import Literal

from datasets import Dataset

from mxd_saelens.zoo._files import BUILD_CORPUS_CMD, ZooFileError, data_dir, require

COLUMNS = ("text", "natural_language", "programming_language", "source_kind", "source")
Split = Literal["train", "heldout"]


def load_corpus(
    split: Split = "train",
    data_root: str | Path | None = None,
    shuffle: bool = True,
    seed: int = 0,
) -> Dataset:
    """Documents of one split with columns ``text``, ``natural_language``,
    ``programming_language``, ``source_kind`` and ``source``.

    The snapshot stores documents grouped by source; by default they come back in a fixed,
    seeded shuffle, so that any prefix of the stream (a short training run, the first
    held-out sequences) mixes every kind of text. ``shuffle=False`` gives the file order."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown corpus split {split!r}; valid splits: train, heldout")
    path = require(data_dir(data_root) / "corpus" / f"{split}.jsonl.gz", BUILD_CORPUS_CMD)
    cols: dict[str, list[str]] = {c: [] for c in COLUMNS}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                for c in COLUMNS:
                    cols[c].append(rec[c])
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError, KeyError) as e:
        raise ZooFileError(
            path, f"corrupt corpus file ({type(e).__name__}: {e})", BUILD_CORPUS_CMD
        ) from e
    if shuffle:
        order = random.Random(seed).sample(range(len(cols["text"])), len(cols["text"]))
        cols = {c: [values[i] for i in order] for c, values in cols.items()}
    return Dataset.from_dict(cols)
