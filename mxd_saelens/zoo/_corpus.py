"""The bundled real-text corpus as an in-memory ``datasets.Dataset`` (no hub access)."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Literal

from datasets import Dataset

from mxd_saelens.zoo._files import BUILD_CORPUS_CMD, ZooFileError, data_dir, require

COLUMNS = ("text", "natural_language", "programming_language", "source_kind", "source")
Split = Literal["train", "heldout"]


def load_corpus(split: Split = "train", data_root: str | Path | None = None) -> Dataset:
    """Documents of one split with columns ``text``, ``natural_language``,
    ``programming_language``, ``source_kind`` and ``source``."""
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
    return Dataset.from_dict(cols)
