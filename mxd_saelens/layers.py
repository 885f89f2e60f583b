"""Loading saved layers with clear errors, and describing them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sae_lens import SAE
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from safetensors import SafetensorError
from torch import nn

from mxd_saelens.params import parameter_count


def load_layer(path: str | Path, device: str = "cpu") -> SAE[Any]:
    """``SAE.load_from_disk`` with errors that say which file is missing or unreadable.

    Only JSON and safetensors are read; nothing is unpickled.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder holding a saved layer.")
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} is missing: a saved layer is a folder with {SAE_CFG_FILENAME} "
                f"and {SAE_WEIGHTS_FILENAME} (written by save_inference_model or the runner)."
            )
    try:
        json.loads((folder / SAE_CFG_FILENAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{folder / SAE_CFG_FILENAME} is not valid JSON ({error}).") from error
    try:
        return SAE.load_from_disk(folder, device=device)
    except SafetensorError as error:
        raise ValueError(
            f"{folder / SAE_WEIGHTS_FILENAME} is not a readable safetensors file ({error}); "
            "it may be truncated or corrupt."
        ) from error


def describe(layer: nn.Module) -> dict[str, Any]:
    cfg = getattr(layer, "cfg", None)
    architecture = cfg.architecture() if cfg is not None else type(layer).__name__
    return {"architecture": architecture, "parameters": parameter_count(layer)}
