"""Publishing saved layers on the Hugging Face hub, where ``SAE.from_pretrained`` finds them.

A release that is not in SAELens's ``pretrained_saes.yaml`` is read as a hub repository:
``SAE.from_pretrained("<user>/<repo>", "<sae_id>")`` downloads ``<sae_id>/cfg.json``,
``<sae_id>/sae_weights.safetensors`` and, when the repository has it,
``<sae_id>/sparsity.safetensors``. SAELens's ``upload_saes_to_huggingface`` writes that layout
(with ``runner_cfg.json`` as well), one folder per sae_id. :func:`stage` writes those files, and
a model card as ``README.md``, to a local folder; :func:`upload_staged` hands the staged folders
to SAELens's function and adds the card. ``mxd-saelens upload --local_dir`` stops after staging,
so the folder holds exactly what the hub would receive.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens.constants import (
    RUNNER_CFG_FILENAME,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
)
from simple_parsing import field as flag

from mxd_saelens.cli.parsing import UserError, parse_options
from mxd_saelens.hub.model_card import PublishedLayer, model_card
from mxd_saelens.saes.loading import load_layer
from mxd_saelens.saes.params import parameter_count

# the files upload_saes_to_huggingface uploads from a layer's folder (its allow_patterns)
HUB_FILES = (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME, RUNNER_CFG_FILENAME)
CARD_FILENAME = "README.md"

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_SAE_ID = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise UserError(f"--repo_id {repo_id!r} is not a hub repository id: give USER/REPO")
    return repo_id


def _check_sae_id(sae_id: str) -> str:
    if not _SAE_ID.fullmatch(sae_id) or any(p in (".", "..") for p in sae_id.split("/")):
        raise UserError(
            f"sae_id {sae_id!r} is not a folder name for the hub: use letters, digits, '_', "
            "'-', '.' (and '/' between folders)"
        )
    return sae_id


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds {type(data).__name__}, not an object.")
    return data


def collect_layers(
    folders: Sequence[str | Path], sae_ids: Sequence[str] | None = None
) -> list[PublishedLayer]:
    """Each folder loaded as a saved layer (so a folder that is not one is refused here, before
    any upload), named by ``sae_ids`` or, by default, by the folder's name."""
    if not folders:
        raise UserError("give the folders of the saved layers to publish")
    if sae_ids and len(sae_ids) != len(folders):
        raise UserError(f"--sae_ids gives {len(sae_ids)} names for {len(folders)} layers")
    names = list(sae_ids) if sae_ids else [Path(f).resolve().name for f in folders]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(
            f"two layers would both be sae_id {repeated[0]!r}: name them with --sae_ids"
        )
    published = []
    for folder, sae_id in zip(folders, names, strict=True):
        _check_sae_id(sae_id)
        layer = load_layer(folder)  # refuses a missing folder, a missing file, a bad config
        path = Path(folder)
        runner = path / RUNNER_CFG_FILENAME
        published.append(
            PublishedLayer(
                folder=path,
                sae_id=sae_id,
                cfg=_read_json(path / SAE_CFG_FILENAME),
                runner_cfg=_read_json(runner) if runner.is_file() else None,
                parameters=parameter_count(layer),
                layer=layer.eval(),
            )
        )
    return published


def attach_evaluation(layers: Sequence[PublishedLayer], results: str | Path) -> None:
    """Give each layer its row of an evaluation JSON (``mxd-saelens eval``'s or the demo's
    ``results.json``), matched by the row's name: the layer's folder as given to ``eval``, the
    folder's name, or the sae_id."""
    path = Path(results)
    if not path.is_file():
        raise FileNotFoundError(f"--eval_results {path}: no such file")
    rows = _read_json(path).get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "name" in r for r in rows):
        raise ValueError(
            f"{path} has no 'rows' list of named results (mxd-saelens eval writes one)"
        )
    for item in layers:
        by_path = [r for r in rows if Path(str(r["name"])).resolve() == item.folder.resolve()]
        by_name = [r for r in rows if r["name"] in (item.folder.resolve().name, item.sae_id)]
        found = by_path or by_name
        if not found:
            names = ", ".join(repr(r["name"]) for r in rows)
            raise UserError(f"{path} has no row for {item.folder} (its rows: {names})")
        item.evaluation = found[0]


def evaluate(
    layers: Sequence[PublishedLayer],
    dataset_path: str,
    n_sequences: int | None,
    context_size: int,
    batch_size: int,
    device: str,
) -> None:
    """Splice each layer into its own model on held-out text and keep its row for the card."""
    from mxd_saelens.data.sources import load_language_model
    from mxd_saelens.data.tokens import token_sequences
    from mxd_saelens.evaluation.loss import evaluate_layers

    by_model: dict[str, list[PublishedLayer]] = {}
    for item in layers:
        model_name = item.metadata.get("model_name")
        if not model_name:
            raise UserError(f"{item.folder} does not record its model: it cannot be evaluated")
        by_model.setdefault(str(model_name), []).append(item)
    for model_name, items in by_model.items():
        model = load_language_model(model_name, device=device)
        tokens = token_sequences(model, dataset_path, context_size, n_sequences).to(device)
        result = evaluate_layers(
            model,
            {item.sae_id: item.layer.to(device) for item in items},
            tokens,
            batch_size=batch_size,
            progress=False,
        )
        for item, row in zip(items, result.rows, strict=True):
            item.evaluation = {**row, "dataset_path": dataset_path}


# --- the model card ------------------------------------------------------------------------


# --- staging and uploading -----------------------------------------------------------------


def staged_files(layers: Iterable[PublishedLayer]) -> list[str]:
    """The paths in the repository, relative to its root, that publishing ``layers`` writes."""
    paths = [CARD_FILENAME]
    for item in layers:
        paths += [f"{item.sae_id}/{name}" for name in HUB_FILES if (item.folder / name).is_file()]
    return sorted(paths)


def check_new_folder(path: str | Path) -> Path:
    """``path``, refused if it is a file or a folder with anything in it: the staged folder
    holds the upload's files and nothing else."""
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; give a new --local_dir")
    return out


def stage(repo_id: str, layers: Sequence[PublishedLayer], out_dir: str | Path) -> Path:
    """Write what the hub receives to ``out_dir`` (which must be new or empty): each layer's
    files in SAELens's upload set under ``<sae_id>/``, and the model card as ``README.md``."""
    out = check_new_folder(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for item in layers:
        target = out / item.sae_id
        target.mkdir(parents=True)
        for name in HUB_FILES:
            if (item.folder / name).is_file():
                shutil.copyfile(item.folder / name, target / name)
    (out / CARD_FILENAME).write_text(model_card(repo_id, layers), encoding="utf-8")
    return out


def upload_staged(staged: str | Path, repo_id: str, sae_ids: Sequence[str], revision: str) -> None:
    """Upload a folder written by :func:`stage` with SAELens's ``upload_saes_to_huggingface``
    (which creates the repository if it does not exist), then its model card."""
    from huggingface_hub import HfApi
    from sae_lens import upload_saes_to_huggingface

    root = Path(staged)
    saes: dict[str, Any] = {sae_id: root / sae_id for sae_id in sae_ids}
    upload_saes_to_huggingface(saes, repo_id, hf_revision=revision, add_default_readme=False)
    HfApi().upload_file(
        path_or_fileobj=str(root / CARD_FILENAME),
        path_in_repo=CARD_FILENAME,
        repo_id=repo_id,
        revision=revision,
        commit_message="Model card (mxd-saelens)",
    )


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


# --- the command ---------------------------------------------------------------------------


@dataclass
class UploadOptions:
    """Which layers, where to, and what the model card reports."""

    layers: list[str] = flag(positional=True, nargs="+", metavar="LAYER")  # noqa: RUF009
    """Folders of saved layers (each with cfg.json and sae_weights.safetensors)."""
    repo_id: str = flag(required=True)
    """The hub repository, USER/REPO (created if it does not exist)."""
    sae_ids: list[str] = flag(default_factory=list, nargs="*", metavar="SAE_ID")  # noqa: RUF009
    """Each layer's name in the repository, the sae_id of SAE.from_pretrained (default: each
    folder's name)."""
    local_dir: str | None = None
    """Write the files the hub would receive to this new folder instead of uploading: no
    network, nothing sent."""
    eval_results: str | None = None
    """A results.json of mxd-saelens eval (or the demo) whose rows the model card reports."""
    evaluate: bool = False
    """Evaluate the layers now, spliced into their model, for the model card."""
    dataset_path: str = "zoo:heldout"
    """Held-out text for --evaluate: the bundled corpus's split, a local file, or a hub set."""
    n_sequences: int | None = 256
    """Sequences of that text for --evaluate (None: every full sequence)."""
    context_size: int = 128
    """Tokens per sequence for --evaluate."""
    batch_size: int = 8
    """Sequences per forward for --evaluate."""
    device: str = "cpu"
    """Device for --evaluate."""
    revision: str = "main"
    """The branch of the repository uploaded to."""


UPLOAD_DESCRIPTION = (
    "Publish saved layers on the Hugging Face hub with SAELens's upload_saes_to_huggingface: "
    "one folder per sae_id with the files SAELens uploads, and a generated model card as "
    "README.md (architecture, model and hooks, training tokens, and ΔCE ± SE and dead fraction "
    "from --eval_results or --evaluate). Log in first (huggingface-cli login, or HF_TOKEN). "
    'After import mxd_saelens, SAE.from_pretrained("USER/REPO", "SAE_ID") loads a layer back. '
    "--local_dir DIR writes exactly the files the hub would receive to a new folder instead, "
    "with no network."
)


def upload(args: Sequence[str]) -> None:
    opts = parse_options(UploadOptions, args, "mxd-saelens upload", UPLOAD_DESCRIPTION)
    repo_id = check_repo_id(opts.repo_id)
    if opts.evaluate and opts.eval_results:
        raise UserError("give --evaluate or --eval_results, not both")
    if opts.local_dir is None and hub_offline():
        raise UserError(
            "HF_HUB_OFFLINE is set, so nothing can be uploaded; --local_dir DIR writes the files "
            "the hub would receive to a folder"
        )
    if opts.local_dir is not None:
        check_new_folder(opts.local_dir)  # before any evaluation
    layers = collect_layers(opts.layers, opts.sae_ids or None)
    if opts.eval_results:
        attach_evaluation(layers, opts.eval_results)
    if opts.evaluate:
        evaluate(
            layers, opts.dataset_path, opts.n_sequences, opts.context_size, opts.batch_size,
            opts.device,
        )  # fmt: skip
    if opts.local_dir is not None:
        out = stage(repo_id, layers, opts.local_dir)
        for path in staged_files(layers):
            print(f"{out / path}")
        print(f"wrote the files for {repo_id} to {out} (nothing was uploaded)")
        return
    with tempfile.TemporaryDirectory(prefix="mxd-saelens-upload-") as tmp:
        stage(repo_id, layers, Path(tmp) / "repo")
        upload_staged(Path(tmp) / "repo", repo_id, [item.sae_id for item in layers], opts.revision)
    for item in layers:
        print(f'uploaded {item.folder} as SAE.from_pretrained("{repo_id}", "{item.sae_id}")')
