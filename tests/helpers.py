"""Small builders shared by the tests."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import torch
from google.protobuf.message import DecodeError
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
        try:
            records = _wandb_records(run_file.read_bytes())
        except DecodeError:  # a record caught half-written by wandb's background writer
            records = []
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
        if len(chunk) < length:  # the writer is mid-record: the next poll reads the rest
            break
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


# hub names the stand-ins are saved under. TransformerLens resolves "gpt2" through
# AutoConfig (the cache's config.json); every official name containing "llama" gets a
# hard-coded full-size config, so the Llama-shaped stand-in takes the name of a Llama-
# architecture model whose config TransformerLens reads from its config.json (Yi).
HUB_STAND_INS = {"gpt2": "gpt2", "llama": "01-ai/Yi-6B"}
_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@torch.no_grad()
def write_hub_stand_in(hub_cache: Path, kind: str, seed: int = 0) -> str:
    """A random 2-block, d_model-64 model of ``kind`` ("gpt2": LayerNorm, GELU MLP; "llama":
    RMSNorm, gated SiLU MLP) with non-trivial norm weights (and biases), saved with
    ``save_pretrained`` where ``from_pretrained`` finds it offline under its hub name in
    ``hub_cache`` (a ``HF_HUB_CACHE``); returns the name."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from mxd_saelens import zoo

    tokenizer = zoo.load_tokenizer()
    torch.manual_seed(seed)
    if kind == "gpt2":
        config = GPT2Config(
            n_layer=2, n_embd=64, n_head=4, n_positions=128, n_ctx=128, vocab_size=len(tokenizer)
        )
        model: Any = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=128,
            vocab_size=len(tokenizer),
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
    for name, param in model.named_parameters():
        if "ln" in name or "norm" in name:  # the norms' affine parts, far from (1, 0)
            base = 1.0 if name.endswith("weight") else 0.0
            param.copy_(base + 0.5 * torch.randn_like(param))
    name = HUB_STAND_INS[kind]
    repo = hub_cache / f"models--{name.replace('/', '--')}"
    snapshot = repo / "snapshots" / _COMMIT
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(_COMMIT)
    return name


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
