"""Bad input, as a tired researcher types it: each gets an error that names the problem (and
usually the fix), raised before any training, with nothing half-written.

``CASES`` is also what ``scripts/bad_inputs_table.py`` runs to print the table of messages.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import mxd_saelens as mxd
from mxd_saelens import zoo
from mxd_saelens.cli.main import UserError, parse_train_args
from mxd_saelens.data.hooks import MLPHookMismatch, resolve_mlp_hooks
from mxd_saelens.data.sources import load_dataset_source
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.evaluation.splice import splice
from mxd_saelens.reading.analysis import check_code
from mxd_saelens.reading.directions import output_directions
from mxd_saelens.reading.probing.probe import check_labels
from mxd_saelens.saes.loading import load_layer
from mxd_saelens.training.runner import MultiPairedTrainingRunner, PairedTrainingRunner

MODEL = "tiny-gelu"
D, H, LAYER = 128, 512, 2


@dataclass
class Workspace:
    """What the cases need: the bundled model, a saved layer and a scratch folder."""

    model: Any
    saved: Path
    tmp: Path

    def out(self, name: str) -> Path:
        return self.tmp / name


def _config(ws: Workspace, **overrides: Any):
    values: dict[str, Any] = {
        "model_name": MODEL,
        "dataset_path": "zoo",
        "layer": LAYER,
        "d_in": D,
        "n_experts": 64,
        "k": 4,
        "d_hidden": H,
        "activation": "gelu_tanh",
        "training_tokens": 4096,
        "context_size": 128,
        "train_batch_size_tokens": 1024,
        "log_to_wandb": False,
        "checkpoint_path": str(ws.out("checkpoints")),
        "output_path": str(ws.out("layer")),
        "verbose": False,
    }
    values.update(overrides)
    return mxd.runner_config("mxd", **values)


def _train(ws: Workspace, **overrides: Any) -> None:
    PairedTrainingRunner(_config(ws, **overrides), override_model=ws.model).run()


def _copy_saved(ws: Workspace, name: str, edit: Callable[[dict], None] | None = None) -> Path:
    folder = ws.out(name)
    folder.mkdir()
    cfg = json.loads((ws.saved / "cfg.json").read_text())
    if edit is not None:
        edit(cfg)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    (folder / "sae_weights.safetensors").write_bytes(
        (ws.saved / "sae_weights.safetensors").read_bytes()
    )
    return folder


def _fake_checkpoint(ws: Workspace, payload: Any) -> Path:
    folder = ws.out("ckpt")
    folder.mkdir()
    torch.save(payload, folder / "trainer_state.pt")
    (folder / "activation_scaler.json").write_text('{"scaling_factor": null}')
    return folder


class _Sneaky:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def _truncated_weights(ws: Workspace) -> None:
    folder = _copy_saved(ws, "truncated")
    data = (folder / "sae_weights.safetensors").read_bytes()
    (folder / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    load_layer(folder)


def _nan_codes(ws: Workspace) -> None:
    from sae_lens.saes.sae import TrainStepInput

    training = mxd.MxDTrainingSAE(mxd.MxDTrainingSAEConfig(d_in=D, n_experts=64, k=4, d_hidden=H))
    pair = torch.cat([torch.full((2, D), float("nan")), torch.zeros(2, D)], -1)
    step = TrainStepInput(
        sae_in=pair,
        coefficients={},
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )
    training.training_forward_pass(step)


def _wide_layer_in_splice(ws: Workspace) -> None:
    layer = mxd.MxD(mxd.MxDConfig(d_in=64, n_experts=32, k=4, d_hidden=256))
    layer.cfg.metadata.hook_name = f"blocks.{LAYER}.ln2.hook_normalized"
    with splice(ws.model, layer):
        pass


def _layer_of_a_deeper_model(ws: Workspace) -> None:
    layer = load_layer(ws.saved)
    layer.cfg.metadata.hook_name = "blocks.7.ln2.hook_normalized"
    layer.cfg.metadata.hook_name_out = "blocks.7.hook_mlp_out"
    with splice(ws.model, layer):
        pass


def _multi(ws: Workspace, cfgs: dict[str, Any], **kwargs: Any) -> None:
    MultiPairedTrainingRunner(cfgs, override_model=ws.model, **kwargs).run()


@dataclass
class Case:
    name: str
    run: Callable[[Workspace], Any]
    error: type[BaseException]
    match: str


CASES: list[Case] = [
    # --- hooks and blocks --------------------------------------------------------------------
    Case(
        "output hook in a later block",
        lambda ws: _train(
            ws,
            layer=None,
            hook_name="blocks.1.ln2.hook_normalized",
            hook_name_out="blocks.2.hook_mlp_out",
        ),
        ValueError,
        "same block",
    ),
    Case(
        "output hook in an earlier block",
        lambda ws: _train(
            ws,
            layer=None,
            hook_name="blocks.2.ln2.hook_normalized",
            hook_name_out="blocks.1.hook_mlp_out",
            check_mlp_hooks=False,
        ),
        ValueError,
        "same block",
    ),
    Case(
        "hook name with a typo",
        lambda ws: _train(ws, layer=None, hook_name="blocks.2.ln2.hook_normalised"),
        ValueError,
        "Did you mean.*hook_normalized",
    ),
    Case(
        "block out of range",
        lambda ws: resolve_mlp_hooks(ws.model, layer=9),
        ValueError,
        "numbered 0 to",
    ),
    Case(
        "input hook that is not the MLP's input",
        lambda ws: _train(ws, layer=None, hook_name="blocks.2.hook_resid_mid"),
        MLPHookMismatch,
        "does not reproduce",
    ),
    Case(
        "output hook that is not the MLP's output",
        lambda ws: _train(
            ws,
            layer=None,
            hook_name="blocks.2.ln2.hook_normalized",
            hook_name_out="blocks.2.hook_resid_post",
        ),
        MLPHookMismatch,
        "check_mlp_hooks=False",
    ),
    Case(
        "d_in that is not the hook's width",
        lambda ws: _train(ws, layer=None, hook_name="blocks.2.ln2.hook_normalized", d_in=64),
        ValueError,
        "set d_in=128",
    ),
    Case(
        "context longer than the model's",
        lambda ws: _train(ws, context_size=4096),
        ValueError,
        "n_ctx=128",
    ),
    # --- layer fields --------------------------------------------------------------------------
    Case("k larger than the experts", lambda ws: _train(ws, k=65), ValueError, "k=65"),
    Case("k of zero", lambda ws: _train(ws, k=0), ValueError, "k=0"),
    Case("unknown activation", lambda ws: _train(ws, activation="gelu2"), ValueError, "activation"),
    Case(
        "misspelled field",
        lambda ws: _train(ws, n_expert=64),
        ValueError,
        "did you mean.*n_experts",
    ),
    Case(
        "field of another architecture",
        lambda ws: _train(ws, l1_coefficient=1.0),
        ValueError,
        "unknown field",
    ),
    Case(
        "unknown architecture",
        lambda ws: mxd.runner_config("mxdd"),
        ValueError,
        r"unknown architecture 'mxdd' \(did you mean mxd\?\); the architectures that replace",
    ),
    Case(
        "unknown architecture, a digit too many",
        lambda ws: mxd.runner_config("mxd2", model_name=MODEL, layer=LAYER),
        ValueError,
        r"unknown architecture 'mxd2' \(did you mean mxd\?\)",
    ),
    Case(
        "unknown --architecture on the command line",
        lambda ws: parse_train_args(["--architecture", "mxd2", "--layer", str(LAYER)]),
        UserError,
        r"invalid choice: 'mxd2' .*did you mean mxd\?",
    ),
    Case("n_experts and d_sae disagree", lambda ws: _train(ws, d_sae=32), ValueError, "n_experts"),
    Case("unknown loss", lambda ws: _train(ws, loss="l2"), ValueError, "loss="),
    Case(
        "an SAE architecture that does not replace an MLP",
        lambda ws: mxd.runner_config("topk", model_name=MODEL, layer=LAYER),
        ValueError,
        "does not replace an MLP",
    ),
    Case(
        "d_in that disagrees with the model, with layer=",
        lambda ws: mxd.runner_config("mxd", model_name=MODEL, layer=LAYER, d_in=64),
        ValueError,
        "leave d_in out",
    ),
    Case(
        "matching a width without a block",
        lambda ws: mxd.runner_config("mxd", model_name=MODEL, match_transcoder_width=4096),
        ValueError,
        "needs layer=",
    ),
    # --- run fields ----------------------------------------------------------------------------
    Case(
        "normalisation that breaks pairs",
        lambda ws: _train(ws, normalize_activations="layer_norm"),
        ValueError,
        "not supported",
    ),
    Case(
        "background prefetching when training from a cache",
        lambda ws: _train(
            ws, prefetch_llm_batches=True, cached_activations_path=str(ws.out("no_cache"))
        ),
        ValueError,
        "prefetch_llm_batches overlaps the model's forward .* there is no forward",
    ),
    Case(
        "a fractional number of batches to prefetch",
        lambda ws: _train(ws, prefetch_llm_batches=2.5),
        ValueError,
        "prefetch_llm_batches=2.5 must be True, False or a number",
    ),
    Case(
        "attention head index on an MLP hook",
        lambda ws: _train(ws, hook_head_index=0),
        ValueError,
        "hook_head_index",
    ),
    Case(
        "zero training tokens",
        lambda ws: _train(ws, training_tokens=0),
        ValueError,
        "training_tokens=0 must be positive",
    ),
    Case("negative learning rate", lambda ws: _train(ws, lr=-1e-3), ValueError, "lr=-0.001"),
    Case("NaN learning rate", lambda ws: _train(ws, lr=float("nan")), ValueError, "lr=nan"),
    Case(
        "dtype that does not exist", lambda ws: _train(ws, dtype="float17"), ValueError, "float17"
    ),
    Case(
        "a CUDA device this machine does not have",
        lambda ws: _train(ws, device="cuda:99"),
        ValueError,
        r"device='cuda:99', but torch sees (no|only \d+) CUDA device",
    ),
    Case(
        "device that is not a device",
        lambda ws: _train(ws, device="gpu0"),
        ValueError,
        "not a torch device",
    ),
    Case(
        "train from SAELens's single-hook activation cache",
        lambda ws: _train(
            ws, use_cached_activations=True, cached_activations_path=_saelens_cache(ws)
        ),
        ValueError,
        "SAELens activation cache .* holds a single hook.*mxd-saelens cache",
    ),
    Case(
        "train from an activation cache that does not exist",
        lambda ws: _train(ws, cached_activations_path=str(ws.out("no_cache"))),
        FileNotFoundError,
        "no activation cache there",
    ),
    # --- resuming --------------------------------------------------------------------------------
    Case(
        "resume from a folder that does not exist",
        lambda ws: _train(ws, resume_from_checkpoint=str(ws.out("nowhere"))),
        FileNotFoundError,
        "not a folder",
    ),
    Case(
        "resume from a folder that is not a checkpoint",
        lambda ws: _train(ws, resume_from_checkpoint=str(ws.saved)),
        FileNotFoundError,
        "trainer_state.pt",
    ),
    Case(
        "resume from a checkpoint that would unpickle code",
        lambda ws: _train(ws, resume_from_checkpoint=str(_fake_checkpoint(ws, {"x": _Sneaky()}))),
        ValueError,
        "is not unpickled",
    ),
    # --- data ----------------------------------------------------------------------------------
    Case(
        "dataset file of an unknown format",
        lambda ws: (ws.out("d.xyz").write_text("x"), load_dataset_source(str(ws.out("d.xyz")))),
        ValueError,
        "cannot tell the format",
    ),
    Case(
        "empty dataset folder",
        lambda ws: (ws.out("empty").mkdir(), load_dataset_source(str(ws.out("empty")))),
        ValueError,
        "holds no files",
    ),
    Case(
        "more evaluation sequences than the text holds",
        lambda ws: token_sequences(ws.model, "zoo:heldout", 128, n_sequences=10**6),
        ValueError,
        "fewer than",
    ),
    Case(
        "evaluation context longer than the text",
        lambda ws: token_sequences(ws.model, _tiny_text_dataset(), 64),
        ValueError,
        "no full sequence",
    ),
    # --- several layers ------------------------------------------------------------------------
    Case("no layers", lambda ws: _multi(ws, {}), ValueError, "at least one"),
    Case(
        "layers that disagree on their data",
        lambda ws: _multi(ws, {"a": _config(ws), "b": _config(ws, context_size=64)}),
        ValueError,
        "context_size",
    ),
    Case(
        "snapshots without a folder",
        lambda ws: _multi(ws, {"a": _config(ws)}, snapshot_tokens=[1024]),
        ValueError,
        "snapshot_path",
    ),
    # --- saved layers --------------------------------------------------------------------------
    Case(
        "load a folder that does not exist",
        lambda ws: load_layer(ws.out("none")),
        FileNotFoundError,
        "not a folder",
    ),
    Case(
        "load a folder without weights",
        lambda ws: (
            ws.out("cfgonly").mkdir(),
            (ws.out("cfgonly") / "cfg.json").write_text("{}"),
            load_layer(ws.out("cfgonly")),
        ),
        FileNotFoundError,
        "sae_weights.safetensors is missing",
    ),
    Case(
        "load a cfg.json that is not JSON",
        lambda ws: (
            _copy_saved(ws, "badjson"),
            (ws.out("badjson") / "cfg.json").write_text("{k: 4"),
            load_layer(ws.out("badjson")),
        ),
        ValueError,
        "not valid JSON",
    ),
    Case("load truncated weights", _truncated_weights, ValueError, "truncated or corrupt"),
    Case(
        "load weights of another shape",
        lambda ws: load_layer(_copy_saved(ws, "shape", lambda c: c.update(d_hidden=256))),
        ValueError,
        "W_enc",
    ),
    Case(
        "load a cfg.json without an architecture",
        lambda ws: load_layer(_copy_saved(ws, "noarch", lambda c: c.pop("architecture"))),
        ValueError,
        "no 'architecture'",
    ),
    Case(
        "load a cfg.json naming an unknown architecture",
        lambda ws: load_layer(_copy_saved(ws, "unknown", lambda c: c.update(architecture="mxe"))),
        ValueError,
        "not registered",
    ),
    Case(
        "load a cfg.json missing k",
        lambda ws: load_layer(_copy_saved(ws, "nok", lambda c: c.pop("k"))),
        ValueError,
        r"missing \['k'\]",
    ),
    Case(
        "load a cfg.json with a field no MxD has",
        lambda ws: load_layer(_copy_saved(ws, "extra", lambda c: c.update(n_expert=64))),
        ValueError,
        r"unknown \['n_expert'\]",
    ),
    # --- splicing, reading, steering, probing --------------------------------------------------
    Case("splice a layer of another width", _wide_layer_in_splice, ValueError, "another model"),
    Case("splice a layer of a deeper model", _layer_of_a_deeper_model, ValueError, "out of range"),
    Case(
        "steer an expert that does not exist",
        lambda ws: check_code(load_layer(ws.saved), 64),
        IndexError,
        "0 to 63",
    ),
    Case(
        "MxD output directions without hidden units",
        lambda ws: output_directions(load_layer(ws.saved)),
        ValueError,
        "hidden units",
    ),
    Case(
        "probe with one class", lambda ws: check_labels(["en"] * 10, 0.2), ValueError, "two classes"
    ),
    Case("unknown bundled model", lambda ws: zoo.load("tiny-gelo"), ValueError, "tiny-gelu"),
    Case("NaN activations in training", _nan_codes, ValueError, "NaN|non-finite"),
]


def _saelens_cache(ws: Workspace) -> str:
    """A real SAELens activation cache of the MLP's input hook (one hook, 1,024 tokens)."""
    from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig

    cfg = CacheActivationsRunnerConfig(
        dataset_path="zoo",
        model_name=MODEL,
        model_batch_size=8,
        hook_name=f"blocks.{LAYER}.ln2.hook_normalized",
        d_in=D,
        training_tokens=1024,
        context_size=128,
        new_cached_activations_path=str(ws.out("saelens_cache")),
        buffer_size_gb=0.001,  # SAELens sizes its buffer by this (2 GB by default)
        device="cpu",
        shuffle=False,
    )
    CacheActivationsRunner(cfg, override_dataset=zoo.load_corpus("train")).run()
    return str(ws.out("saelens_cache"))


def _tiny_text_dataset():
    from datasets import Dataset

    return Dataset.from_dict({"text": ["a few words only"] * 3})


@pytest.fixture(scope="module")
def saved_layer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "mxd"
    layer = mxd.MxD(mxd.MxDConfig(d_in=D, n_experts=64, k=4, d_hidden=H, activation="gelu_tanh"))
    layer.cfg.metadata.hook_name = f"blocks.{LAYER}.ln2.hook_normalized"
    layer.cfg.metadata.hook_name_out = f"blocks.{LAYER}.hook_mlp_out"
    layer.cfg.metadata.model_name = MODEL
    layer.save_model(folder)
    return folder


@pytest.fixture(scope="module")
def bundled_model():
    return zoo.load(MODEL)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_a_clear_error_and_writes_nothing(
    case, bundled_model, saved_layer, tmp_path
):
    ws = Workspace(model=bundled_model, saved=saved_layer, tmp=tmp_path)
    with pytest.raises(case.error, match=case.match) as raised:
        case.run(ws)
    assert "\n" not in str(raised.value).strip(), "one message, one line"
    for written in ("layer", "checkpoints"):
        assert not ws.out(written).exists(), f"{written} was written before the error"


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


def test_the_sneaky_checkpoint_is_never_unpickled(bundled_model, saved_layer, tmp_path, capfd):
    ws = Workspace(model=bundled_model, saved=saved_layer, tmp=tmp_path)
    with pytest.raises(ValueError):
        _train(ws, resume_from_checkpoint=str(_fake_checkpoint(ws, {"x": _Sneaky()})))
    assert "unpickled!" not in capfd.readouterr().out
    # the payload would run code under plain pickle: the test's premise holds
    assert pickle.loads(pickle.dumps(_Sneaky())) is None
