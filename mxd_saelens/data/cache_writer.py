"""Write a paired activation cache: one model pass over N tokens, every block's MLP input and
output kept on disk, so that sweeps train many layers without running the model again.

    from mxd_saelens.data.cache_writer import cache_paired_activations
    cache_paired_activations(model_name="tiny-gelu", dataset_path="zoo", layers=[2, 3],
                             training_tokens=2_000_000, output_path="activations/tiny-gelu")

or ``mxd-saelens cache --model_name tiny-gelu --layers 2 3 --training_tokens 2000000
--output_path activations/tiny-gelu``; train from it with ``cached_activations_path``. The
tokens are cut into sequences by SAELens's ``ActivationsStore`` with the same settings a training
run uses, and all the blocks are captured from one forward. The format is in
:mod:`mxd_saelens.data.cache_format`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from sae_lens.config import dict_field  # JSON from the command line, as in train
from simple_parsing import field
from simple_parsing.helpers import choice
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookedRootModule

import mxd_saelens
from mxd_saelens import zoo
from mxd_saelens.data.cache_format import (
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILENAME,
    block_filename,
)
from mxd_saelens.data.hooks import MLPHooks, check_mlp_pair, resolve_mlp_hooks
from mxd_saelens.data.paired_store import PairedActivationsStore, is_bundled_corpus, pair_columns
from mxd_saelens.data.sources import load_dataset_source, load_language_model


@dataclass
class CacheConfig:
    """What to cache: the model, its blocks, the text and how it is cut into sequences (the
    same settings as SAELens's LanguageModelSAERunnerConfig, which a layer trained from the cache
    must repeat)."""

    layers: list[int] = field(default_factory=list)  # noqa: RUF009
    """Blocks L whose MLP input (blocks.L.ln2.hook_normalized) and output (blocks.L.hook_mlp_out)
    are cached, all from one forward."""
    model_name: str = "tiny-gelu"
    """The model (a bundled one, or any name SAELens's load_model takes)."""
    dataset_path: str = ""
    """Text to run the model on: 'zoo' (the bundled corpus, the default for a bundled model), a
    local file or folder, or a Hugging Face dataset name."""
    training_tokens: int = 2_000_000
    """Tokens to cache (rows per block)."""
    output_path: str = "activations"
    """The cache folder to create (it must not exist yet)."""
    dtype: str = choice("float32", "bfloat16", default="float32")
    """Storage dtype; bfloat16 halves the size, and a float32 layer trains from it on the stored
    values widened."""
    context_size: int = 128
    """Tokens per sequence."""
    store_batch_size_prompts: int = 32
    """Sequences per model forward."""
    prepend_bos: bool = True
    """Prepend BOS to each sequence (SAELens's setting of the same name)."""
    exclude_special_tokens: bool = False
    """Drop BOS/EOS/PAD positions from the cache (SAELens's setting of the same name)."""
    disable_concat_sequences: bool = False
    """Do not concatenate documents into sequences (SAELens's setting of the same name)."""
    streaming: bool = True
    """Stream a hub dataset rather than download it whole."""
    model_class_name: str = "HookedTransformer"
    """TransformerLens class to load the model as."""
    model_from_pretrained_kwargs: dict[str, Any] | None = dict_field(default=None)  # noqa: RUF009
    """Options for loading a model by name, as in a training run (paired training's default:
    SAELens's, with the norms folded unless fold_ln is given)."""
    device: str = "cpu"
    """Device for the model's forward (the cache is written from the CPU)."""
    autocast_lm: bool = False
    """Run the model under bfloat16 autocast."""
    check_mlp_hooks: bool = True
    """Check on the first batch that each block's own MLP maps the cached input to the cached
    output, and record the result in the manifest."""
    verbose: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("say which blocks to cache: --layers L [L ...]")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"--layers {self.layers} names a block twice.")
        for name in ("training_tokens", "context_size", "store_batch_size_prompts"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive.")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}; choose one of {sorted(DTYPES)}.")
        if not self.dataset_path and self.model_name in zoo.list_models():
            self.dataset_path = "zoo"


def cache_paired_activations(
    cfg: CacheConfig | None = None,
    *,
    override_model: HookedRootModule | None = None,
    override_dataset: Any = None,
    **options: Any,
) -> Path:
    """Write the cache ``cfg`` (or ``CacheConfig(**options)``) describes; return its folder.

    Everything that can be checked without the model's forward is checked first (the folder,
    the dataset, the blocks); the cache is written to a temporary folder beside
    ``output_path`` and renamed into place only once complete, so an interrupted run leaves no
    folder that looks like a cache.
    """
    cfg = _checked_config(cfg, options, dataset_given=override_dataset is not None)
    out = Path(cfg.output_path)
    dataset = override_dataset
    if dataset is None:
        dataset = load_dataset_source(cfg.dataset_path) or cfg.dataset_path
    model = override_model or load_language_model(
        cfg.model_name,
        cfg.model_class_name,
        device=cfg.device,
        model_from_pretrained_kwargs=_loading_options(cfg),
    )
    pairs = [resolve_mlp_hooks(model, layer=layer) for layer in cfg.layers]
    store = _capture_store(model, pairs, dataset, cfg)

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        checks = _write_blocks(store, pairs, partial, cfg)
        manifest = _manifest(cfg, pairs, checks, dataset, store)
        (partial / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=2))
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _checked_config(
    cfg: CacheConfig | None, options: dict[str, Any], dataset_given: bool
) -> CacheConfig:
    """The config, from ``cfg`` or the keyword options, checked before the model loads."""
    if cfg is None:
        known = {f.name for f in fields(CacheConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown cache option(s) {unknown}; known: {sorted(known)}.")
        cfg = CacheConfig(**options)
    elif options:
        raise ValueError("give either a CacheConfig or keyword options, not both.")
    if Path(cfg.output_path).exists():
        raise FileExistsError(
            f"output_path={str(cfg.output_path)!r} exists; give a new folder (a cache is never "
            "overwritten)."
        )
    if not cfg.dataset_path and not dataset_given:
        raise ValueError(
            f"say what to run the model on: --dataset_path (none for {cfg.model_name})"
        )
    return cfg


def _loading_options(cfg: CacheConfig) -> dict[str, Any]:
    """How the model loads: as a paired training run of the same options loads it."""
    from mxd_saelens.data.sources import paired_loading_options

    options = cfg.model_from_pretrained_kwargs
    if options is None:  # SAELens's runner default, which a layer trained from the cache gets
        options = (
            {"center_writing_weights": False} if cfg.model_class_name == "HookedTransformer" else {}
        )
    return paired_loading_options(cfg.model_class_name, options)


def store_default(name: str) -> Any:
    """SAELens's default of a runner-config field (what the capture store uses)."""
    from sae_lens.config import LanguageModelSAERunnerConfig

    (f,) = (f for f in fields(LanguageModelSAERunnerConfig) if f.name == name)
    return f.default


def _capture_store(
    model: HookedRootModule, pairs: list[MLPHooks], dataset: Any, cfg: CacheConfig
) -> PairedActivationsStore:
    special = None
    if cfg.exclude_special_tokens:
        from sae_lens.util import get_special_token_ids

        special = torch.tensor(get_special_token_ids(model.tokenizer), dtype=torch.long)
    store = PairedActivationsStore.for_caching(
        model,
        pairs,
        dataset,
        n_tokens=cfg.training_tokens,
        context_size=cfg.context_size,
        store_batch_size_prompts=cfg.store_batch_size_prompts,
        prepend_bos=cfg.prepend_bos,
        exclude_special_tokens=special,
        disable_concat_sequences=cfg.disable_concat_sequences,
        streaming=cfg.streaming,
        autocast_lm=cfg.autocast_lm,
        quiet=is_bundled_corpus(cfg.dataset_path),
    )
    store.token_hash = hashlib.sha256()
    return store


def _write_blocks(
    store: PairedActivationsStore, pairs: list[MLPHooks], folder: Path, cfg: CacheConfig
) -> list[dict[str, Any]]:
    """Stream ``cfg.training_tokens`` packed rows into one file per block; return each
    block's MLP check."""
    columns = pair_columns(pairs)
    files = [open(folder / block_filename(p.layer), "wb") for p in pairs]  # noqa: SIM115
    checks: list[dict[str, Any]] = [{"checked": False} for _ in pairs]
    batches = store._iterate_filtered_activations()  # [tokens, Σ (d_in + d_out)] per forward
    written = 0
    bar = tqdm(total=cfg.training_tokens, desc="caching", unit="tok", disable=not cfg.verbose)
    try:
        while written < cfg.training_tokens:
            rows = next(batches)[: cfg.training_tokens - written]
            if written == 0 and cfg.check_mlp_hooks:
                checks = [
                    _check_pair(store.model, p, rows[:, c], cfg)
                    for p, c in zip(pairs, columns, strict=True)
                ]
            stored = rows.to(DTYPES[cfg.dtype][1])
            if cfg.dtype == "bfloat16":
                stored = stored.view(torch.int16)  # numpy has no bfloat16: keep the bits
            for file, cols in zip(files, columns, strict=True):
                file.write(stored[:, cols].contiguous().numpy().tobytes())
            written += rows.shape[0]
            bar.update(rows.shape[0])
    finally:
        bar.close()
        for file in files:
            file.close()
    return checks


def _check_pair(
    model: HookedRootModule, pair: MLPHooks, rows: torch.Tensor, cfg: CacheConfig
) -> dict[str, Any]:
    sample = rows[:512]
    error = check_mlp_pair(
        model,
        pair,
        sample[:, : pair.d_in].to(cfg.device),
        sample[:, pair.d_in :].to(cfg.device),
        rtol=5e-2 if cfg.autocast_lm else 1e-3,
    )
    return {"checked": True, "relative_error": error, "tokens": int(sample.shape[0])}


def _manifest(
    cfg: CacheConfig,
    pairs: Sequence[MLPHooks],
    checks: Sequence[dict[str, Any]],
    dataset: Any,
    store: PairedActivationsStore,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cache_id": uuid.uuid4().hex,
        "mxd_saelens_version": mxd_saelens.__version__,
        "sae_lens_version": version("sae-lens"),
        "transformer_lens_version": version("transformer-lens"),
        "torch_version": torch.__version__,
        "model_name": cfg.model_name,
        "model_class_name": cfg.model_class_name,
        "model_from_pretrained_kwargs": _loading_options(cfg),
        "dtype": cfg.dtype,
        "byte_order": "little",
        "n_tokens": cfg.training_tokens,
        "n_sequences": store.n_sequences_served,
        "context_size": cfg.context_size,
        "prepend_bos": cfg.prepend_bos,
        "exclude_special_tokens": cfg.exclude_special_tokens,
        "disable_concat_sequences": cfg.disable_concat_sequences,
        # SAELens's defaults, which the capture store keeps
        "sequence_separator_token": store_default("sequence_separator_token"),
        "seqpos_slice": list(store_default("seqpos_slice")),
        "autocast_lm": cfg.autocast_lm,
        "dataset": {
            "path": cfg.dataset_path,
            "fingerprint": getattr(dataset, "_fingerprint", None),
            "tokens_sha256": store.token_hash.hexdigest(),
            "streaming": cfg.streaming,
        },
        "blocks": [
            _block_entry(pair, check, cfg.training_tokens)
            for pair, check in zip(pairs, checks, strict=True)
        ],
        "options": asdict(cfg),
    }


def _block_entry(pair: MLPHooks, check: dict[str, Any], n_tokens: int) -> dict[str, Any]:
    return {
        "block": pair.layer,
        "file": block_filename(pair.layer),
        "hook_in": pair.hook_in,
        "hook_out": pair.hook_out,
        "d_in": pair.d_in,
        "d_out": pair.d_out,
        "shape": [n_tokens, pair.d_in + pair.d_out],
        "mlp_check": check,
    }
