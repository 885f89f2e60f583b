"""Rebuild the bundled TransformerLens models from config.json + model.safetensors."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from mxd_saelens.zoo._files import (
    TRAIN_TOKENIZER_CMD,
    ZooFileError,
    check_name,
    data_dir,
    read_json,
    require,
    train_model_cmd,
)

SPECIAL = "<|endoftext|>"  # BOS = EOS = PAD


def load_tokenizer(data_root: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The zoo's byte-level BPE tokenizer; it prepends BOS (``<|endoftext|>``, id 0)."""
    path = require(data_dir(data_root) / "tokenizer.json", TRAIN_TOKENIZER_CMD)
    try:
        tok = PreTrainedTokenizerFast(
            tokenizer_file=str(path),
            bos_token=SPECIAL,
            eos_token=SPECIAL,
            pad_token=SPECIAL,
            add_bos_token=True,
            model_max_length=128,
        )
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise ZooFileError(path, f"unreadable tokenizer ({e})", TRAIN_TOKENIZER_CMD) from e
    # TransformerLens re-loads tokenizers by name unless add_bos_token is set; it still reads
    # this key, so give it the local path (nothing is fetched from the hub).
    tok.init_kwargs["name_or_path"] = str(path.parent)
    return tok


def _config(name: str, root: Path, device: str) -> HookedTransformerConfig:
    path = root / name / "config.json"
    conf = read_json(path, train_model_cmd(name))
    try:
        fields: dict[str, Any] = dict(conf["hooked_transformer_config"])
        return HookedTransformerConfig(**fields, device=device, init_weights=False)
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise ZooFileError(path, f"invalid model config ({e!r})", train_model_cmd(name)) from e


def _weights(name: str, root: Path) -> dict[str, torch.Tensor]:
    path = require(root / name / "model.safetensors", train_model_cmd(name))
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError, OSError, ...: the file is not valid safetensors
        raise ZooFileError(path, f"corrupt weights file ({e})", train_model_cmd(name)) from e


def _with_own_placeholders(
    model: HookedTransformer, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """TransformerLens ≥ 3.5 saves the causal masks (``blocks.L.attn.mask``) as empty
    placeholders that it rebuilds on load; older releases (the ones circuit-tracer resolves to)
    expect the full buffer. The mask is a function of the config alone, so an empty one takes
    the model's own."""
    own = model.state_dict()
    return {
        key: own[key] if key.endswith("attn.mask") and value.numel() == 0 and key in own else value
        for key, value in state.items()
    }


def load(
    name: str = "tiny-gelu",
    device: str = "cpu",
    data_root: str | Path | None = None,
    fold_ln: bool = True,
    cls: type[HookedTransformer] = HookedTransformer,
) -> HookedTransformer:
    """Load a bundled model, in eval mode, with its tokenizer attached, as an instance of
    ``cls`` (``HookedTransformer`` or a subclass such as SAELens's ``HookedSAETransformer``).

    As ``HookedTransformer.from_pretrained`` does by default, the norms' weights and biases
    are folded into the following linear maps (and the writing weights centred), so that
    ``blocks.L.ln2.hook_normalized`` is exactly what the MLP's weights see; the logits are
    unchanged. ``fold_ln=False`` keeps the weights as trained, with affine norms.
    """
    check_name(name)
    root = data_dir(data_root)
    cfg = _config(name, root, device)
    state = _weights(name, root)
    tok = load_tokenizer(root)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")
        model = cls(cfg, tokenizer=tok, move_to_device=False)
    path = root / name / "model.safetensors"
    try:
        model.load_state_dict(_with_own_placeholders(model, state), strict=True)
    except RuntimeError as e:
        raise ZooFileError(
            path, f"weights do not match config.json ({e})", train_model_cmd(name)
        ) from e
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ZooFileError(path, f"non-finite weights in {bad[:3]}", train_model_cmd(name))
    if fold_ln:
        model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    return model.to(device, print_details=False).eval()


def model_config(name: str = "tiny-gelu", data_root: str | Path | None = None) -> Any:
    """A bundled model's ``HookedTransformerConfig``, read without loading its weights."""
    check_name(name)
    return _config(name, data_dir(data_root), "cpu")


def default_layer(name: str = "tiny-gelu", data_root: str | Path | None = None) -> int:
    """The layer whose MLP the zoo model is meant to be studied at."""
    check_name(name)
    path = data_dir(data_root) / name / "config.json"
    layer = read_json(path, train_model_cmd(name)).get("default_layer")
    if not isinstance(layer, int):
        raise ZooFileError(path, "no integer 'default_layer'", train_model_cmd(name))
    return layer


def model_info(name: str = "tiny-gelu", data_root: str | Path | None = None) -> dict[str, Any]:
    """Training record of a model (command, tokens, wall time, losses, MLP ablation costs)."""
    check_name(name)
    return read_json(data_dir(data_root) / name / "training.json", train_model_cmd(name))
