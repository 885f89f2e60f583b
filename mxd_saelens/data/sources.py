"""Where models and datasets come from: the bundled zoo, local files, or the hub.

Hub names (``gpt2``, ``Skylion007/openwebtext``) go through SAELens's and datasets' own loading
code; a TransformerLens model loaded by name for paired training has its norms folded
(:func:`paired_loading_options`), and a saved layer's model is loaded as the layer recorded
(:func:`load_model_of_layers`). The bundled models load by name (``tiny-gelu``), the bundled corpus as
``dataset_path="zoo"`` (or ``zoo:heldout``), and a local ``.json``/``.jsonl``/``.jsonl.gz``/
``.parquet``/``.txt`` file or folder through ``datasets`` without any network.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.data.paired_store import is_bundled_corpus

_LOCAL_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".csv": "csv",
}


def load_language_model(
    model_name: str,
    model_class_name: str = "HookedTransformer",
    device: str = "cpu",
    model_from_pretrained_kwargs: dict[str, Any] | None = None,
) -> HookedRootModule:
    """SAELens's ``load_model``, which (once this package is imported) also loads the bundled
    models by name."""
    from sae_lens import load_model as sae_lens_loading

    return sae_lens_loading.load_model(
        model_class_name,
        model_name,
        device=device,
        model_from_pretrained_kwargs=model_from_pretrained_kwargs,
    )


def paired_loading_options(
    model_class_name: str, model_from_pretrained_kwargs: dict[str, Any] | None
) -> dict[str, Any]:
    """The loading options paired training loads a model by name with.

    SAELens loads a ``HookedTransformer`` with ``from_pretrained_no_processing``, which keeps
    the norms' weights and biases: then ``blocks.L.ln2.hook_normalized`` is not what the MLP's
    weights see, and a layer trained on it would not replace the MLP. So ``fold_ln=True`` is
    added unless the options name ``fold_ln`` themselves; every other option is kept as given.
    """
    options = dict(model_from_pretrained_kwargs or {})
    if model_class_name == "HookedTransformer":
        options.setdefault("fold_ln", True)
    return options


def load_model_of_layers(
    layers: Iterable[Any], model_name: str | None = None, device: str = "cpu"
) -> HookedRootModule:
    """The model saved layers were trained on, loaded as they were: the name, class and
    loading options recorded in the first layer's metadata (``model_name`` overrides the name).
    A layer that records no options gets paired training's (:func:`paired_loading_options`)."""
    metadata = next((layer.cfg.metadata for layer in layers), None)
    model_name = model_name or getattr(metadata, "model_name", None)
    if not model_name:
        raise ValueError("the layers do not record their model; pass --model")
    class_name = getattr(metadata, "model_class_name", None) or "HookedTransformer"
    options = getattr(metadata, "model_from_pretrained_kwargs", None)
    if options is None:
        options = paired_loading_options(class_name, None)
    return load_language_model(
        model_name, class_name, device=device, model_from_pretrained_kwargs=options
    )


def _builder_for(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zst")]
    if suffixes and suffixes[-1] in _LOCAL_BUILDERS:
        return _LOCAL_BUILDERS[suffixes[-1]]
    raise ValueError(
        f"cannot tell the format of {path}; use one of {sorted(_LOCAL_BUILDERS)} "
        "(optionally compressed), or a folder of such files."
    )


def load_dataset_source(dataset_path: str) -> Dataset | None:
    """The dataset for ``dataset_path`` when it is the bundled corpus or a local file/folder;
    None for a hub name, which SAELens's store loads itself."""
    if is_bundled_corpus(dataset_path):
        from mxd_saelens import zoo

        split = dataset_path.partition(":")[2] or "train"
        return zoo.load_corpus(split)  # type: ignore[arg-type]
    path = Path(dataset_path).expanduser()
    if not dataset_path or not path.exists():
        return None
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"the dataset folder {path} holds no files.")
        builder = _builder_for(files[0])
        data_files = [str(p) for p in files if _builder_for(p) == builder]
    else:
        builder = _builder_for(path)
        data_files = [str(path)]
    return load_dataset(builder, data_files=data_files, split="train")
