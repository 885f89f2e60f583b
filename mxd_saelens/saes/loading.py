"""Loading saved layers with clear errors, and describing them."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from sae_lens import SAE
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from sae_lens.registry import SAE_CLASS_REGISTRY
from safetensors import SafetensorError
from torch import nn

from mxd_saelens.saes.params import parameter_count
from mxd_saelens.saes.traits import OWN_ARCHITECTURES


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
        saved = json.loads((folder / SAE_CFG_FILENAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{folder / SAE_CFG_FILENAME} is not valid JSON ({error}).") from error
    check_saved_config(saved, folder / SAE_CFG_FILENAME)
    try:
        return SAE.load_from_disk(folder, device=device)
    except SafetensorError as error:
        raise ValueError(
            f"{folder / SAE_WEIGHTS_FILENAME} is not a readable safetensors file ({error}); "
            "it may be truncated or corrupt."
        ) from error


def check_saved_config(saved: Any, path: Path) -> None:
    """A saved config names a registered architecture and, for this package's architectures,
    holds exactly the fields its config class takes: a layer loads as saved, or not at all
    (a missing ``k`` would otherwise load as the default)."""
    if not isinstance(saved, dict):
        raise ValueError(f"{path} holds {type(saved).__name__}, not a config object.")
    architecture = saved.get("architecture")
    if architecture is None:
        raise ValueError(f"{path} has no 'architecture' field; it is not a saved layer's config.")
    if architecture not in SAE_CLASS_REGISTRY:
        hint = (
            " It is one of mxd_saelens's: `import mxd_saelens` registers it."
            if architecture in OWN_ARCHITECTURES
            else ""
        )
        raise ValueError(
            f"{path} names architecture {architecture!r}, which is not registered "
            f"(registered: {', '.join(sorted(SAE_CLASS_REGISTRY))}).{hint}"
        )
    if architecture not in OWN_ARCHITECTURES:
        return
    config_class = SAE_CLASS_REGISTRY[architecture][1]
    expected = {f.name for f in fields(config_class) if f.init}
    missing = sorted(expected - set(saved))
    unknown = sorted(set(saved) - expected - {"architecture"})
    if missing or unknown:
        problems = [
            f"missing {missing}" if missing else "",
            f"unknown {unknown}" if unknown else "",
        ]
        raise ValueError(
            f"{path} does not describe a {architecture} layer as saved "
            f"({'; '.join(p for p in problems if p)}): re-save the layer, or restore the file."
        )


def describe(layer: nn.Module) -> dict[str, Any]:
    cfg = getattr(layer, "cfg", None)
    architecture = cfg.architecture() if cfg is not None else type(layer).__name__
    return {"architecture": architecture, "parameters": parameter_count(layer)}
