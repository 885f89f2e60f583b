"""The on-disk format of a paired activation cache, and the checks that a layer can train on one.

A cache is a folder::

    DIR/manifest.json     what was cached, how, and from what (below)
    DIR/block_L.bin       block L's rows: n_tokens × (d_in + d_out) values, row-major,
                          little-endian float32 or bfloat16 (raw 2-byte bfloat16 bits)

Row t of ``block_L.bin`` is token t's ``[mlp_in ‖ mlp_out]``, exactly the packed row the
streaming store trains on, and row t of every block file is the same token, so several blocks
read with one permutation give the same rows as one shared forward. ``numpy.memmap`` (or
``torch.from_file``) opens a file with the shape and dtype the manifest gives.

Why this and not SAELens's ``CacheActivationsRunner`` dataset: that format holds one hook per
cache, in Arrow shards of whole sequences (``[context, d_in]`` per row), which would need two
caches aligned by position and a decode of every shard to draw single tokens in a random order;
an epoch's permutation over all tokens of a flat file is one fancy index into a memory map. Raw
bytes rather than ``.npy`` because numpy has no bfloat16: both dtypes are read the same way.

The manifest records: the format and its version, the package's (and SAELens's,
TransformerLens's, torch's) version, the model, each block's hooks and widths and the result of
its MLP check, the dtype, the token count, the context size and every store setting that
decides which tokens become rows (BOS, special tokens, concatenation), the dataset's path and
fingerprints (datasets' own fingerprint where it has one, and a SHA-256 of every token sequence
the model was run on), and a random ``cache_id`` that checkpoints record. A cache is written to a
hidden temporary folder beside ``DIR`` and renamed at the end, so a folder with a manifest is a
complete cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.data.hooks import MLPHooks, check_mlp_pair, layer_of, mlp_out_hook

FORMAT = "mxd-saelens paired activations"
FORMAT_VERSION = 1
MANIFEST_FILENAME = "manifest.json"
DTYPES = {"float32": (np.float32, torch.float32), "bfloat16": (np.int16, torch.bfloat16)}
# files of SAELens's CacheActivationsRunner output (a datasets folder)
_SAELENS_CACHE_FILES = ("dataset_info.json", "state.json")
# runner-config fields that decide which tokens became rows: a layer's config must agree
DATA_FIELDS = (
    "context_size",
    "prepend_bos",
    "exclude_special_tokens",
    "disable_concat_sequences",
    "sequence_separator_token",
    "seqpos_slice",
)


class CacheMismatch(ValueError):
    """The cache was made for another model, block, width, dtype or data than the layer."""


def block_filename(block: int) -> str:
    return f"block_{block}.bin"


@dataclass(frozen=True)
class CachedBlock:
    """One block's file: its hooks, widths and the MLP check made when it was written."""

    block: int
    hook_in: str
    hook_out: str
    d_in: int
    d_out: int
    mlp_check: dict[str, Any]

    @property
    def width(self) -> int:
        return self.d_in + self.d_out


@dataclass(frozen=True)
class PairedCache:
    """An opened, complete cache folder."""

    path: Path
    manifest: dict[str, Any]
    blocks: dict[int, CachedBlock]

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def dtype(self) -> str:
        return str(self.manifest["dtype"])

    @property
    def cache_id(self) -> str:
        return str(self.manifest["cache_id"])

    @property
    def model_name(self) -> str:
        return str(self.manifest["model_name"])

    def rows(self, block: int) -> np.memmap:
        """Block ``block``'s rows, memory-mapped read-only: ``[n_tokens, d_in + d_out]``
        (bfloat16 as int16 bits; :func:`as_tensor` turns a slice into a tensor)."""
        entry = self.blocks[block]
        return np.memmap(
            self.path / block_filename(block),
            dtype=DTYPES[self.dtype][0],
            mode="r",
            shape=(self.n_tokens, entry.width),
        )

    @classmethod
    def open(cls, path: str | Path) -> PairedCache:
        """Open a cache folder, or say in one line why it is not a complete paired cache."""
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"cached_activations_path={str(path)!r} is not a folder: there is no activation "
                f"cache there; {_MAKE_ONE}."
            )
        manifest = _read_manifest(folder)
        blocks = {
            int(b["block"]): CachedBlock(
                block=int(b["block"]),
                hook_in=b["hook_in"],
                hook_out=b["hook_out"],
                d_in=int(b["d_in"]),
                d_out=int(b["d_out"]),
                mlp_check=dict(b.get("mlp_check", {})),
            )
            for b in manifest["blocks"]
        }
        cache = cls(path=folder, manifest=manifest, blocks=blocks)
        _check_block_files(cache)
        return cache


PRECISION = {"bfloat16": 0, "float32": 1, "torch.float32": 1, "float64": 2, "torch.float64": 2}


_MAKE_ONE = (
    "make one with `mxd-saelens cache` (mxd_saelens.data.cache_writer.cache_paired_activations)"
)


def _read_manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest, checked to describe a paired cache of this format version."""
    manifest_path = folder / MANIFEST_FILENAME
    if not manifest_path.exists():
        if any((folder / name).exists() for name in _SAELENS_CACHE_FILES):
            raise ValueError(
                f"{folder} is a SAELens activation cache (CacheActivationsRunner), which "
                "holds a single hook; paired training needs each token's MLP input and "
                f"output from one forward: {_MAKE_ONE}."
            )
        raise FileNotFoundError(
            f"{folder} holds no {MANIFEST_FILENAME}: it is not a paired activation cache, "
            f"or an incomplete copy of one; {_MAKE_ONE}."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{manifest_path} is not valid JSON ({error}).") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path} does not describe a paired activation cache.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder} is a paired cache of format version {manifest.get('format_version')}; "
            f"this package reads version {FORMAT_VERSION}: cache again."
        )
    return manifest


def _check_block_files(cache: PairedCache) -> None:
    """Every block's file holds exactly the bytes its manifest entry describes."""
    itemsize = np.dtype(DTYPES[cache.dtype][0]).itemsize
    for block, entry in cache.blocks.items():
        file = cache.path / block_filename(block)
        expected = cache.n_tokens * entry.width * itemsize
        size = file.stat().st_size if file.exists() else None
        if size != expected:
            found = "is missing" if size is None else f"has {size} bytes"
            raise ValueError(
                f"{file} {found}, but the manifest describes {expected} bytes "
                f"({cache.n_tokens} tokens × {entry.width} {cache.dtype} values): the cache "
                f"is incomplete or damaged; {_MAKE_ONE}."
            )


def readable_as(stored: str, layer_dtype: str) -> bool:
    """Whether a layer of ``layer_dtype`` may train from rows stored as ``stored``: at the same
    precision or a wider one (a bfloat16 cache, half the disk, for a float32 layer: the rows are
    widened on read), never a narrower one."""
    return PRECISION.get(layer_dtype.removeprefix("torch."), -1) >= PRECISION[stored]


def as_tensor(rows: np.ndarray, dtype: str) -> torch.Tensor:
    """Rows read from a block file as a tensor of the cache's dtype."""
    if not rows.flags.writeable:  # a view of the read-only map: torch wants its own copy
        rows = np.array(rows)
    tensor = torch.from_numpy(np.ascontiguousarray(rows))
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


@dataclass(frozen=True)
class LayerWants:
    """What a layer's config needs from a cache, read from the config alone (no model)."""

    model_name: str
    block: int
    hook_in: str
    hook_out: str
    d_in: int
    d_out: int
    dtype: str


def layer_wants(cfg: Any, hook_name_out: str | None = None) -> LayerWants:
    """The block, hooks and widths a runner config's layer trains on."""
    block = layer_of(cfg.hook_name)
    if block is None:
        raise ValueError(
            f"hook_name={cfg.hook_name!r} names no block: a layer trained from a paired cache "
            "reads blocks.L.… hooks (the cache holds blocks.L.ln2.hook_normalized → "
            "blocks.L.hook_mlp_out)."
        )
    hook_out = hook_name_out or cfg.sae.metadata.hook_name_out or mlp_out_hook(block)
    d_out = getattr(cfg.sae, "d_out", None) or cfg.sae.d_in
    return LayerWants(
        model_name=cfg.model_name,
        block=block,
        hook_in=cfg.hook_name,
        hook_out=hook_out,
        d_in=int(cfg.sae.d_in),
        d_out=int(d_out),
        dtype=str(cfg.dtype),
    )


def check_cache_for_layer(cache: PairedCache, cfg: Any, wants: LayerWants) -> None:
    """Refuse, in one line naming what differs and the fix, a cache the layer cannot train on:
    another model, block, hook, width, dtype or data settings."""
    where = f"the activation cache {cache.path}"
    if wants.model_name != cache.model_name:
        raise CacheMismatch(
            f"{where} was made from {cache.model_name!r}, but the layer is for "
            f"model_name={wants.model_name!r}: cache {wants.model_name!r} (mxd-saelens cache "
            f"--model_name {wants.model_name}), or set model_name={cache.model_name!r}."
        )
    _check_block_entry(cache, wants, where)
    if not readable_as(cache.dtype, wants.dtype):
        raise CacheMismatch(
            f"{where} stores {cache.dtype}, but the config has dtype={wants.dtype!r}, which "
            f"would discard the precision the cache was written with: set "
            f"dtype={cache.dtype!r} (--dtype {cache.dtype}) to train from it, or cache again "
            f"with --dtype {wants.dtype}."
        )
    _check_data_settings(cache, cfg, where)


def _check_block_entry(cache: PairedCache, wants: LayerWants, where: str) -> None:
    """The cache holds the layer's block, with its hooks and widths."""
    if wants.block not in cache.blocks:
        raise CacheMismatch(
            f"{where} holds blocks {sorted(cache.blocks)}, not block {wants.block} that "
            f"hook_name={wants.hook_in!r} is in: cache it (mxd-saelens cache --layers "
            f"{wants.block}), or train a layer of one of those blocks."
        )
    entry = cache.blocks[wants.block]
    for role, cached, given in (
        ("input", entry.hook_in, wants.hook_in),
        ("output", entry.hook_out, wants.hook_out),
    ):
        if cached != given:
            raise CacheMismatch(
                f"{where} holds block {wants.block}'s {role} hook {cached!r}, but the layer's "
                f"{role} hook is {given!r}: train on the cached hooks, or train this pair from "
                "the model (no cached_activations_path)."
            )
    if (wants.d_in, wants.d_out) != (entry.d_in, entry.d_out):
        raise CacheMismatch(
            f"{where} holds block {wants.block} with d_in={entry.d_in}, d_out={entry.d_out}, "
            f"but the layer maps d_in={wants.d_in} → d_out={wants.d_out}: set "
            f"d_in={entry.d_in} and d_out={entry.d_out}."
        )


def _check_data_settings(cache: PairedCache, cfg: Any, where: str) -> None:
    """The cache was made from the config's dataset with its data settings."""
    cached_dataset = cache.manifest["dataset"]["path"]
    if cfg.dataset_path and cfg.dataset_path != cached_dataset:
        raise CacheMismatch(
            f"{where} was made from dataset_path={cached_dataset!r}, but the config has "
            f"dataset_path={cfg.dataset_path!r}: set dataset_path={cached_dataset!r} (or leave "
            "it empty to take the cache's), or cache the other dataset."
        )
    for name in DATA_FIELDS:
        cached, given = cache.manifest[name], getattr(cfg, name)
        given = list(given) if isinstance(given, tuple) else given  # as JSON holds it
        if cached != given:
            raise CacheMismatch(
                f"{where} was made with {name}={cached!r}, but the config has "
                f"{name}={given!r}: set {name}={cached!r}, or cache again with {name}={given!r}."
            )


def open_cache_for(cfg: Any, hook_name_out: str | None = None) -> PairedCache:
    """The cache at ``cfg.cached_activations_path``, checked against the layer ``cfg`` trains
    (before any model is loaded); ``cfg.dataset_path`` is filled from the cache when empty."""
    wants = layer_wants(cfg, hook_name_out)
    cache = PairedCache.open(cfg.cached_activations_path)
    check_cache_for_layer(cache, cfg, wants)
    if not cfg.dataset_path:
        cfg.dataset_path = cache.manifest["dataset"]["path"]
    return cache


def uses_cache(cfg: Any) -> bool:
    """Train from a paired cache: ``cached_activations_path`` set (SAELens fills it from its
    default path when only ``use_cached_activations`` is)."""
    return cfg.cached_activations_path is not None


@torch.no_grad()
def check_cached_pairs(
    model: HookedRootModule, pairs: Sequence[MLPHooks], cache: PairedCache, n_rows: int = 256
) -> None:
    """:func:`check_hook_pairs` on a cache: every block's own MLP applied to cached inputs must
    reproduce the cached outputs (to bfloat16's precision for a bfloat16 or autocast cache)."""
    loose = cache.dtype == "bfloat16" or cache.manifest.get("autocast_lm", False)
    for pair in pairs:
        rows = as_tensor(cache.rows(pair.layer)[:n_rows], cache.dtype).float()
        device = next(iter(model.parameters())).device
        check_mlp_pair(
            model,
            pair,
            rows[:, : pair.d_in].to(device),
            rows[:, pair.d_in :].to(device),
            rtol=5e-2 if loose else 1e-3,
        )
