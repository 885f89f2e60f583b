"""Locations of the bundled zoo files and the errors raised when they are missing or broken."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
MODEL_NAMES: tuple[str, ...] = ("tiny-gelu", "tiny-gated")

BUILD_CORPUS_CMD = "python scripts/build_corpus.py"
TRAIN_TOKENIZER_CMD = "python scripts/train_zoo_model.py tokenizer"


def train_model_cmd(name: str) -> str:
    return f"python scripts/train_zoo_model.py model --name {name}"


class ZooFileError(RuntimeError):
    """A bundled zoo file is missing, unreadable or corrupt."""

    def __init__(self, path: Path, problem: str, rebuild: str) -> None:
        super().__init__(f"{path}: {problem}. Rebuild it from the repository root with: {rebuild}")
        self.path = path


def check_name(name: str) -> str:
    """Return ``name`` if it is a bundled model, else raise ValueError listing the valid names."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown zoo model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return name


def data_dir(override: str | Path | None) -> Path:
    return Path(override) if override is not None else DATA_DIR


def require(path: Path, rebuild: str) -> Path:
    if not path.is_file():
        raise ZooFileError(path, "file is missing", rebuild)
    return path


def read_json(path: Path, rebuild: str) -> dict[str, Any]:
    try:
        obj = json.loads(require(path, rebuild).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZooFileError(path, f"not valid JSON ({e})", rebuild) from e
    if not isinstance(obj, dict):
        raise ZooFileError(path, "expected a JSON object", rebuild)
    return obj
