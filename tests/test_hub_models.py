"""Models by name, as a researcher's first run loads them: a GPT-2-shaped (LayerNorm) and a
Llama-shaped (RMSNorm, gated MLP) model with random weights and non-trivial norm weights,
saved in a Hugging Face cache laid out on disk and loaded offline through SAELens's and
TransformerLens's real loading code. With the default flags they train, cache, evaluate and
splice, because paired training loads them with their norms folded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import transformers.utils.hub as transformers_hub
from transformer_lens import HookedTransformer

from mxd_saelens import runner_config
from mxd_saelens.cli.main import main
from mxd_saelens.data.cache_writer import cache_paired_activations
from mxd_saelens.data.hooks import MLPHookMismatch
from mxd_saelens.data.sources import load_model_of_layers, paired_loading_options
from mxd_saelens.evaluation.loss import evaluate_splice
from mxd_saelens.evaluation.splice import SplicedLayer, hooks_of
from mxd_saelens.saes.loading import load_layer
from mxd_saelens.training.runner import PairedTrainingRunner
from tests.conftest import synthetic_texts
from tests.helpers import HUB_STAND_INS, write_hub_stand_in

KINDS = list(HUB_STAND_INS)
SMALL = {  # a few thousand tokens in batches of 512: seconds per run
    "training_tokens": 4096,
    "context_size": 64,
    "train_batch_size_tokens": 512,
    "n_batches_in_buffer": 4,
    "store_batch_size_prompts": 8,
    "lr": 0.01,
}
FLAGS = [f"--{k}={v}" for k, v in SMALL.items()]


@pytest.fixture(scope="session")
def hub_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache holding both stand-ins, and a local text file to train on."""
    root = tmp_path_factory.mktemp("hub-world")
    for kind in KINDS:
        write_hub_stand_in(root / "hub", kind)
    with open(root / "text.jsonl", "w") as f:
        for text in synthetic_texts(200, seed=1):
            f.write(json.dumps({"text": text}) + "\n")
    return root


@pytest.fixture
def offline_hub(hub_world: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """huggingface_hub (and so transformers and TransformerLens) reading that cache, offline:
    its constants are read at import, so they are set on the module too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_world / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_world / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    # transformers < 5 (the circuits environment's) keeps its own copies, also read at import
    for name, value in (("TRANSFORMERS_CACHE", str(hub_world / "hub")), ("_is_offline_mode", True)):
        if hasattr(transformers_hub, name):
            monkeypatch.setattr(transformers_hub, name, value)
    return hub_world


def _own_mlp_splice_is_exact(model: HookedTransformer, layer: torch.nn.Module) -> None:
    """The model's own MLP spliced on the hooks the trained layer records changes nothing:
    those hooks are the MLP's input and output in the model as loaded for the layer."""
    hooks = hooks_of(model, layer)
    mlp = model.blocks[hooks.layer].mlp
    tokens = model.to_tokens(synthetic_texts(4, seed=3), truncate=True)[:, :64]
    metrics = evaluate_splice(model, SplicedLayer(mlp, hooks), tokens)
    assert abs(metrics.delta_ce) < 1e-5 and metrics.nmse < 1e-10, metrics


def test_loading_options_fold_the_norms_unless_fold_ln_is_given() -> None:
    sae_lens_default = {"center_writing_weights": False}
    assert paired_loading_options("HookedTransformer", sae_lens_default) == {
        "center_writing_weights": False,
        "fold_ln": True,
    }
    assert paired_loading_options("HookedTransformer", {"fold_ln": False}) == {"fold_ln": False}
    assert paired_loading_options("HookedTransformer", None) == {"fold_ln": True}
    # not a TransformerLens class: from_pretrained has no fold_ln there
    assert paired_loading_options("AutoModelForCausalLM", {}) == {}
    assert sae_lens_default == {"center_writing_weights": False}  # the caller's dict is kept


@pytest.mark.parametrize("kind", KINDS)
def test_python_api_trains_caches_and_splices_a_model_by_name(
    kind: str, offline_hub: Path, tmp_path: Path
) -> None:
    name = HUB_STAND_INS[kind]
    text = str(offline_hub / "text.jsonl")
    common = {"model_name": name, "layer": 1, "match_transcoder_width": 512, "k": 8, **SMALL}
    cfg = runner_config(
        "mxd", dataset_path=text, log_to_wandb=False, output_path=str(tmp_path / "l"), **common
    )
    PairedTrainingRunner(cfg).run()
    layer = load_layer(tmp_path / "l")
    assert layer.cfg.metadata.model_from_pretrained_kwargs["fold_ln"] is True
    model = load_model_of_layers([layer])
    assert model.cfg.normalization_type == ("LNPre" if kind == "gpt2" else "RMSPre")
    assert model.cfg.gated_mlp is (kind == "llama")
    _own_mlp_splice_is_exact(model, layer)

    cache = cache_paired_activations(
        model_name=name, layers=[1], dataset_path=text, training_tokens=4096, context_size=64,
        output_path=str(tmp_path / "cache"), verbose=False,
    )  # fmt: skip
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["model_from_pretrained_kwargs"]["fold_ln"] is True
    cached = runner_config(
        "topk_transcoder", cached_activations_path=str(cache), log_to_wandb=False,
        output_path=str(tmp_path / "tc"), **common,
    )  # fmt: skip
    PairedTrainingRunner(cached).run()
    transcoder = load_layer(tmp_path / "tc")
    tokens = model.to_tokens(synthetic_texts(4, seed=3), truncate=True)[:, :64]
    metrics = evaluate_splice(model, SplicedLayer(transcoder, hooks_of(model, transcoder)), tokens)
    assert math.isfinite(metrics.delta_ce) and transcoder.cfg.metadata.hook_name == cfg.hook_name


@pytest.mark.parametrize("kind", KINDS)
def test_cli_trains_caches_and_evaluates_a_model_by_name_with_the_default_flags(
    kind: str, offline_hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = HUB_STAND_INS[kind]
    text = str(offline_hub / "text.jsonl")
    base = ["--model_name", name, "--layer", "1", "--k", "8", "--match_transcoder_width", "512"]
    out = tmp_path / "layer"
    train = ["train", *base, "--dataset_path", text, "--log_to_wandb", "False", *FLAGS]
    assert main([*train, "--output_path", str(out)]) == 0, capsys.readouterr().err
    cache = ["cache", "--model_name", name, "--layers", "1", "--dataset_path", text]
    cache += ["--training_tokens", "4096", "--context_size", "64"]
    assert main([*cache, "--output_path", str(tmp_path / "cache")]) == 0
    from_cache = [*train, "--cached_activations_path", str(tmp_path / "cache")]
    assert main([*from_cache, "--output_path", str(tmp_path / "cached")]) == 0
    evaluate = ["eval", str(out), str(tmp_path / "cached"), "--dataset", text]
    evaluate += ["--context_size", "64", "--n_sequences", "8", "--specialisation", "False"]
    assert main([*evaluate, "--out_dir", str(tmp_path / "eval")]) == 0
    rows = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"]
    assert [r["n_sequences"] for r in rows] == [8, 8], rows
    assert all(math.isfinite(r["delta_ce"]) and math.isfinite(r["nmse"]) for r in rows), rows
    layer = load_layer(out)
    _own_mlp_splice_is_exact(load_model_of_layers([layer]), layer)


def test_an_unfolded_model_given_as_an_object_is_refused(offline_hub: Path) -> None:
    unfolded = HookedTransformer.from_pretrained_no_processing("gpt2")
    cfg = runner_config(
        "mxd", model_name="gpt2", layer=1, match_transcoder_width=512, k=8, log_to_wandb=False,
        dataset_path=str(offline_hub / "text.jsonl"), **SMALL,
    )  # fmt: skip
    with pytest.raises(MLPHookMismatch, match="fold_ln"):
        PairedTrainingRunner(cfg, override_model=unfolded)


def test_a_layer_is_evaluated_on_the_model_loaded_as_it_was_trained(
    offline_hub: Path, tmp_path: Path
) -> None:
    """A layer trained (with the check off) on the unfolded model records fold_ln=False, and
    its model loads unfolded again: the affine norm is back."""
    cfg = runner_config(
        "topk_transcoder", model_name="gpt2", layer=1, d_sae=64, k=8, log_to_wandb=False,
        dataset_path=str(offline_hub / "text.jsonl"), output_path=str(tmp_path / "l"),
        model_from_pretrained_kwargs={"fold_ln": False}, check_mlp_hooks=False, **SMALL,
    )  # fmt: skip
    PairedTrainingRunner(cfg).run()
    layer = load_layer(tmp_path / "l")
    assert layer.cfg.metadata.model_from_pretrained_kwargs == {"fold_ln": False}
    assert load_model_of_layers([layer]).cfg.normalization_type == "LN"


def test_the_cache_writer_takes_loading_options_as_json(offline_hub: Path, tmp_path: Path) -> None:
    text = str(offline_hub / "text.jsonl")
    args = ["cache", "--model_name", "gpt2", "--layers", "1", "--dataset_path", text]
    args += ["--training_tokens", "1024", "--context_size", "64", "--check_mlp_hooks", "False"]
    args += ["--model_from_pretrained_kwargs", '{"fold_ln": false}']
    assert main([*args, "--output_path", str(tmp_path / "c")]) == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["model_from_pretrained_kwargs"] == {"fold_ln": False}  # as given
