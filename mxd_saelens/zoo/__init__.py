"""Bundled offline default: a real-text corpus, a BPE tokenizer and two small TransformerLens
language models trained on it (``tiny-gelu``: GPT-2 style; ``tiny-gated``: Llama style).

    from mxd_saelens import zoo
    model = zoo.load("tiny-gelu")           # HookedTransformer with its tokenizer attached
    ds = zoo.load_corpus("heldout")         # datasets.Dataset: text + labels
    hook = f"blocks.{zoo.default_layer('tiny-gelu')}.hook_mlp_out"

Everything is read from files inside the package; nothing is downloaded.
"""

from __future__ import annotations

from mxd_saelens.zoo._corpus import load_corpus
from mxd_saelens.zoo._files import DATA_DIR, MODEL_NAMES, ZooFileError
from mxd_saelens.zoo._models import (
    default_layer,
    load,
    load_tokenizer,
    model_config,
    model_info,
)


def list_models() -> list[str]:
    """Names accepted by :func:`load`."""
    return list(MODEL_NAMES)


__all__ = [
    "DATA_DIR",
    "ZooFileError",
    "default_layer",
    "list_models",
    "load",
    "load_corpus",
    "load_tokenizer",
    "model_config",
    "model_info",
]
