"""Small builders shared by the tests."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from wandb.proto import wandb_internal_pb2


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Give every parameter random values (the default init leaves some at zero)."""
    generator = torch.Generator().manual_seed(seed)
    for param in module.parameters():
        param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * scale)
    if hasattr(module, "normalize_experts"):
        module.normalize_experts()
    return module


def grads_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def zero_grads(module: nn.Module) -> None:
    for p in module.parameters():
        p.grad = None


def wandb_run_file_since(started: float) -> Path:
    """The one offline wandb run file created under ``$WANDB_DIR`` since ``started``."""
    root = Path(os.environ["WANDB_DIR"]) / "wandb"
    runs = [p for p in root.glob("offline-run-*/run-*.wandb") if p.stat().st_ctime >= started]
    assert len(runs) == 1, f"expected one new wandb run under {root}, found {runs}"
    return runs[0]


def wandb_history(run_file: Path, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The rows logged to an offline wandb run, read from its ``.wandb`` file once wandb's
    background writer has written the run's exit record.

    The file is a LevelDB-style log (7-byte file header, 32 KiB blocks, records of
    crc32 | length | type | payload, split across blocks as FIRST/MIDDLE/LAST); each payload
    is a ``wandb.proto`` ``Record``.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(run_file.read_bytes())
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run_file} has no exit record after {timeout} s")
        time.sleep(0.5)
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def _wandb_records(data: bytes) -> list[Any]:
    pos, block, pending = 7, 32768, b""
    payloads: list[bytes] = []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def wandb_record_kinds(run_file: Path) -> list[str]:
    """The kind of every record in an offline wandb run file (``history``, ``artifact`` …)."""
    return [r.WhichOneof("record_type") for r in _wandb_records(run_file.read_bytes())]


def as_hub_cache(repo_folder: Path, repo_id: str, cache: Path) -> str:
    """Lay out ``repo_folder`` (the files of a hub repository) as the Hugging Face hub cache
    holds a downloaded repository: ``models--USER--REPO/snapshots/<commit>/...`` and
    ``refs/main`` naming the commit. Returns the commit hash."""
    import hashlib
    import shutil

    root = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    shutil.copytree(repo_folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return commit
