"""Several layers from one model forward: the same layers as training each alone, exact resume,
Ctrl-C, layers in different blocks, and configs that cannot share a forward."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from sae_lens import SAE

from mxd_saelens.training.config import runner_config
from mxd_saelens.training.runner import MultiPairedTrainingRunner, PairedTrainingRunner
from mxd_saelens.training.trainer import TrainingInterrupted

D, H = 32, 128
SMALL_RUN = {
    "model_name": "tiny-test",
    "d_in": D,
    "context_size": 32,
    "train_batch_size_tokens": 256,
    "store_batch_size_prompts": 8,
    "n_batches_in_buffer": 8,
    "n_eval_batches": 1,
    "eval_batch_size_prompts": 4,
    "training_tokens": 256 * 16,
    "log_to_wandb": False,
    "verbose": False,
    "seed": 3,
}
LAYERS = {
    "mxd": ("mxd", {"n_experts": 96, "k": 4, "d_hidden": H, "lr": 3e-3}),
    "tc_slow": ("topk_transcoder", {"d_sae": 256, "k": 8, "lr": 1e-3}),
    "skip_block0": (
        "topk_skip_transcoder",
        {"d_sae": 256, "k": 8, "lr": 3e-3, "hook_name": "blocks.0.ln2.hook_normalized"},
    ),
}


def layer_cfg(name: str, tmp_path: Path, checkpoint: str | None = None, **extra):
    architecture, fields = LAYERS[name]
    fields = {"hook_name": "blocks.1.ln2.hook_normalized", **fields}
    cfg = runner_config(
        architecture,
        **fields,
        **{**SMALL_RUN, **extra},
        output_path=str(tmp_path / name),
        checkpoint_path=checkpoint,
    )
    cfg.checkpoint_path = checkpoint  # no random suffix, to find it
    return cfg


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_layers_from_one_forward_equal_the_layers_trained_alone(tiny_model, text_dataset, tmp_path):
    together = MultiPairedTrainingRunner(
        {name: layer_cfg(name, tmp_path / "multi") for name in LAYERS},
        override_model=tiny_model,
        override_dataset=text_dataset,
    ).run()
    for name in LAYERS:
        alone = PairedTrainingRunner(
            layer_cfg(name, tmp_path / "single"),
            override_model=tiny_model,
            override_dataset=text_dataset,
        ).run()
        assert_same_weights(alone, together[name])
        # the learning rates differ, so the layers did not all train alike
        loaded = SAE.load_from_disk(tmp_path / "multi" / name)
        assert loaded.cfg.metadata.hook_name == layer_cfg(name, tmp_path).hook_name
        assert loaded.cfg.metadata.hook_name_out.endswith("hook_mlp_out")
    assert SAE.load_from_disk(tmp_path / "multi" / "skip_block0").cfg.metadata.hook_name_out == (
        "blocks.0.hook_mlp_out"
    )


def test_interrupted_and_resumed_multi_run_equals_the_straight_run(
    tiny_model, text_dataset, tmp_path
):
    names = ("mxd", "tc_slow")
    straight = MultiPairedTrainingRunner(
        {n: layer_cfg(n, tmp_path / "straight") for n in names},
        override_model=tiny_model,
        override_dataset=text_dataset,
    ).run()

    checkpoints = str(tmp_path / "ckpt")
    first = MultiPairedTrainingRunner(
        {n: layer_cfg(n, tmp_path / "resumed", checkpoints) for n in names},
        override_model=tiny_model,
        override_dataset=text_dataset,
    )
    calls = {"n": 0}

    def interrupt_at_step_7(acts, hook):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGINT)

    first.saes["tc_slow"].hook_sae_input.add_hook(interrupt_at_step_7)
    with pytest.raises(TrainingInterrupted) as stopped:
        first.run()
    checkpoint = stopped.value.checkpoint
    assert checkpoint is not None and checkpoint.name == str(7 * 256)
    for name in names:
        assert (checkpoint / name / "sae_weights.safetensors").exists()
        assert not (tmp_path / "resumed" / name / "cfg.json").exists()  # nothing final written

    resumed = MultiPairedTrainingRunner(
        {
            n: layer_cfg(n, tmp_path / "resumed", resume_from_checkpoint=str(checkpoint))
            for n in names
        },
        override_model=tiny_model,
        override_dataset=text_dataset,
    ).run()
    for name in names:
        assert_same_weights(straight[name], resumed[name])


@pytest.mark.parametrize("one_config", [False, True])
def test_snapshots_are_the_layers_at_that_many_tokens(
    tiny_model, text_dataset, tmp_path, one_config
):
    # one shuffle buffer size for both runs: 16 store batches of 256 tokens
    long = layer_cfg("mxd", tmp_path / "long", n_batches_in_buffer=16)
    # one runner for one config or several by name: snapshots for either
    PairedTrainingRunner(
        long if one_config else {"mxd": long},
        override_model=tiny_model,
        override_dataset=text_dataset,
        snapshot_tokens=[256 * 8],
        snapshot_path=tmp_path / "snapshots",
    ).run()
    # a constant learning rate makes the long run's snapshot the short run's final layer
    trained = PairedTrainingRunner(
        layer_cfg("mxd", tmp_path / "short", n_batches_in_buffer=16, training_tokens=256 * 8),
        override_model=tiny_model,
        override_dataset=text_dataset,
    ).run()
    folder = tmp_path / "snapshots" / str(256 * 8) / ("layer" if one_config else "mxd")
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]
    snapshot = SAE.load_from_disk(folder)
    final = SAE.load_from_disk(tmp_path / "long" / "mxd")
    for key, value in snapshot.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(final.state_dict()["W_gate"], snapshot.state_dict()["W_gate"])


def test_layers_that_cannot_share_a_forward_are_refused_by_name(tiny_model, text_dataset, tmp_path):
    cfgs = {
        "a": layer_cfg("mxd", tmp_path),
        "b": layer_cfg("tc_slow", tmp_path, context_size=16),
    }
    with pytest.raises(ValueError, match="context_size is 32 for 'a' and 16 for 'b'"):
        MultiPairedTrainingRunner(cfgs, override_model=tiny_model, override_dataset=text_dataset)
