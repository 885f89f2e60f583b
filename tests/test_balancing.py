"""Selection-bias balancing (beyond the MxD paper): the nudge against an independent
computation, its place in the real trainer's step, its settings and that it is training-only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from sae_lens.config import SAETrainerConfig

import mxd_saelens as mxd
from mxd_saelens.saes.paired import balance_selection_bias
from mxd_saelens.training.trainer import PairedSAETrainer
from tests.helpers import randomize_

I, O, H, N, K, B = 12, 10, 24, 50, 5, 64


def make_layer(architecture: str, **kw):
    if architecture == "mxd":
        cfg = mxd.MxDTrainingSAEConfig(d_in=I, d_out=O, d_hidden=H, n_experts=N, k=K, **kw)
        return randomize_(mxd.MxDTrainingSAE(cfg), scale=0.3)
    cfg = mxd.TopKTranscoderTrainingSAEConfig(d_in=I, d_out=O, d_sae=N, k=K, **kw)
    return randomize_(mxd.TopKTranscoderTrainingSAE(cfg), scale=0.3)


def test_sign_mode_moves_each_bias_toward_the_mean_count() -> None:
    bias = torch.zeros(5)
    counts = torch.tensor([0, 2, 4, 4, 10])  # mean 4
    balance_selection_bias(bias, counts, 0.5, "sign")
    assert bias.tolist() == [0.5, 0.5, 0.0, 0.0, -0.5]


def test_revive_mode_raises_only_codes_that_did_not_fire() -> None:
    bias = torch.full((4,), -1.0)
    balance_selection_bias(bias, torch.tensor([0, 3, 0, 9]), 0.25, "revive")
    assert bias.tolist() == [-0.75, -1.0, -0.75, -1.0]


def test_centred_revive_raises_silent_codes_relative_to_the_rest_and_keeps_the_mean() -> None:
    bias = torch.tensor([1.0, -2.0, 0.5, 3.0])
    counts = torch.tensor([0, 3, 0, 9])
    raised = bias.clone()
    balance_selection_bias(raised, counts, 0.25, "revive")
    centred = bias.clone()
    balance_selection_bias(centred, counts, 0.25, "revive_centred")
    # two of four codes raised by 0.25: the mean nudge, 0.125, comes off every code
    torch.testing.assert_close(centred, raised - 0.125)
    torch.testing.assert_close(centred.mean(), bias.mean())


def test_dead_revive_raises_only_codes_silent_for_the_whole_window() -> None:
    bias = torch.zeros(5)
    silent_steps = torch.tensor([0, 1, 2, 3, 7])
    counts = (silent_steps == 0).long()  # this step: only code 0 fired
    balance_selection_bias(bias, counts, 0.5, "revive_dead", silent_steps=silent_steps, window=3)
    assert bias.tolist() == [0.0, 0.0, 0.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="silent_steps"):
        balance_selection_bias(bias, counts, 0.5, "revive_dead")


def test_mxd_revives_by_default_and_transcoders_do_not() -> None:
    layer = make_layer("mxd")
    assert (layer.cfg.balance_rate, layer.cfg.balance_mode) == (1e-2, "revive")
    assert make_layer("topk_transcoder").cfg.balance_rate == 0.0


def test_rate_zero_leaves_the_bias_alone() -> None:
    bias = torch.randn(6)
    before = bias.clone()
    balance_selection_bias(bias, torch.arange(6), 0.0, "sign")
    assert torch.equal(bias, before)


def trainer_for(layer, warm_up_steps: int = 0, lr: float = 1e-2) -> PairedSAETrainer:
    cfg = SAETrainerConfig(
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        total_training_samples=B * 4,
        device="cpu",
        autocast=False,
        lr=lr,
        lr_end=lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=warm_up_steps,
        adam_beta1=0.9,
        adam_beta2=0.999,
        lr_decay_steps=0,
        n_restart_cycles=1,
        train_batch_size_samples=B,
        dead_feature_window=1000,
        feature_sampling_window=1000,
        logger=mxd.runner_config("mxd", d_in=I, n_experts=N, k=K, log_to_wandb=False).logger,
    )
    return PairedSAETrainer(cfg=cfg, sae=layer, data_provider=iter(()))


@pytest.mark.parametrize("architecture", ["mxd", "topk_transcoder"])
@pytest.mark.parametrize("mode", ["sign", "revive", "revive_centred"])
def test_trainer_step_adds_the_nudge_after_the_optimiser(architecture: str, mode: str) -> None:
    rate = 0.01
    plain, balanced = (
        make_layer(architecture, balance_rate=0.0),
        make_layer(architecture, balance_rate=rate, balance_mode=mode),
    )
    balanced.load_state_dict(plain.state_dict())
    generator = torch.Generator().manual_seed(1)
    batch = torch.randn(B, I + O, generator=generator)
    out_plain = trainer_for(plain).step(batch)
    trainer_for(balanced).step(batch)
    # the same forward, so the same firing counts: the nudge is the only difference
    counts = (out_plain.feature_acts.to_dense() != 0).sum(0).double()
    silent = rate * (counts == 0).double()
    expected = {
        "sign": rate * torch.sign(counts.mean() - counts),
        "revive": silent,
        "revive_centred": silent - silent.mean(),
    }[mode]
    difference = balanced.selection_bias() - plain.selection_bias()
    assert expected.abs().sum() > 0  # the test checks something
    torch.testing.assert_close(difference.double(), expected, rtol=0, atol=1e-6)
    others = [n for n, _ in plain.named_parameters() if n not in ("b_gate", "b_enc")]
    for name in others:
        # an MxD renormalises its copied expert vectors first: equal up to that rounding
        torch.testing.assert_close(getattr(plain, name), getattr(balanced, name), rtol=0, atol=1e-6)


@pytest.mark.parametrize("architecture", ["mxd", "topk_transcoder"])
def test_lr_schedule_scales_the_nudge_with_the_learning_rate(architecture: str) -> None:
    rate, warm_up = 0.01, 4
    plain = make_layer(architecture, balance_rate=0.0)
    constant = make_layer(architecture, balance_rate=rate, balance_mode="revive")
    scheduled = make_layer(
        architecture, balance_rate=rate, balance_mode="revive", balance_schedule="lr"
    )
    for layer in (constant, scheduled):
        layer.load_state_dict(plain.state_dict())
    batch = torch.randn(B, I + O, generator=torch.Generator().manual_seed(2))
    before = plain.selection_bias().detach().clone()
    out = trainer_for(plain, warm_up).step(batch)
    trainer_for(constant, warm_up).step(batch)
    trainer_for(scheduled, warm_up).step(batch)
    silent = ((out.feature_acts.to_dense() != 0).sum(0) == 0).double()
    assert silent.sum() > 0  # some code did not fire: there is a nudge to scale
    moved_by_adam = plain.selection_bias().double() - before.double()
    # SAELens's linear warm-up takes its first step at lr / warm_up_steps
    for layer, expected in ((constant, rate), (scheduled, rate / warm_up)):
        nudge = layer.selection_bias().double() - before.double() - moved_by_adam
        torch.testing.assert_close(nudge, expected * silent, rtol=0, atol=1e-6)


@pytest.mark.parametrize("architecture", ["mxd", "topk_transcoder"])
def test_dead_revive_in_the_trainer_waits_for_the_window(architecture: str) -> None:
    # lr 0: Adam moves nothing, so every change of the selection bias is the nudge
    rate, window, steps = 0.01, 3, 6
    layer = make_layer(
        architecture, balance_rate=rate, balance_mode="revive_dead", balance_window=window
    )
    trainer = trainer_for(layer, lr=0.0)
    batch = torch.randn(B, I + O, generator=torch.Generator().manual_seed(3))[: B // 4]
    silent_steps = torch.zeros(N, dtype=torch.long)  # counted here, from the step outputs alone
    expected = torch.zeros(N, dtype=torch.float64)
    revive_would = torch.zeros(N, dtype=torch.float64)
    before = layer.selection_bias().detach().double().clone()
    for _ in range(steps):
        fired = (trainer.step(batch).feature_acts.to_dense() != 0).any(0)
        silent_steps = torch.where(fired, 0, silent_steps + 1)
        expected += rate * (silent_steps >= window).double()
        revive_would += rate * (~fired).double()
    moved = layer.selection_bias().detach().double() - before
    assert expected.sum() > 0 and not torch.equal(expected, revive_would)  # the window matters
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"balance_rate": -0.1}, "balance_rate=-0.1 must be non-negative"),
        ({"balance_mode": "up"}, "balance_mode='up'"),
        ({"balance_schedule": "cosine"}, "balance_schedule='cosine'"),
        ({"balance_window": 0}, "balance_window=0 must be a whole number"),
    ],
)
def test_bad_balance_settings_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mxd.MxDTrainingSAEConfig(d_in=I, n_experts=N, k=K, **kwargs)
    with pytest.raises(ValueError, match=message):
        mxd.TopKTranscoderTrainingSAEConfig(d_in=I, d_sae=N, k=K, **kwargs)


def test_balancing_is_training_only(tmp_path: Path) -> None:
    layer = make_layer("mxd", balance_rate=0.01)
    layer.eval().save_inference_model(tmp_path / "layer")
    saved = json.loads((tmp_path / "layer" / "cfg.json").read_text())
    assert "balance_rate" not in saved
    assert saved["metadata"]["training_architecture_details"]["balance_rate"] == 0.01
    loaded = SAE.load_from_disk(tmp_path / "layer")
    x = torch.randn(7, I)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), layer(x), rtol=0, atol=0)
