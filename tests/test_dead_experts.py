"""The opt-in dead-feature auxiliary loss (AuxK, beyond the MxD paper) against independent
dense computations, its save/load behaviour, and a short training run that reports it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sae_lens import SAE
from sae_lens.saes.sae import TrainStepInput

import mxd_saelens as mxd
from mxd_saelens.training.config import runner_config
from mxd_saelens.training.runner import PairedTrainingRunner
from tests.helpers import grads_of, randomize_, wandb_history, wandb_run_file_since, zero_grads

I, O, H, N, K, AUX_K, B = 12, 10, 24, 50, 5, 12, 40
DT = torch.float64
AUX = "auxiliary_reconstruction_loss"


def make_mxd(**kw) -> mxd.MxDTrainingSAE:
    cfg = mxd.MxDTrainingSAEConfig(
        d_in=I, d_out=O, d_hidden=H, n_experts=N, k=K, dtype="float64", **kw
    )
    return randomize_(mxd.MxDTrainingSAE(cfg))  # type: ignore[return-value]


def make_transcoder(skip: bool, **kw):
    cls, cfg_cls = (
        (mxd.TopKSkipTranscoderTrainingSAE, mxd.TopKSkipTranscoderTrainingSAEConfig)
        if skip
        else (mxd.TopKTranscoderTrainingSAE, mxd.TopKTranscoderTrainingSAEConfig)
    )
    return randomize_(cls(cfg_cls(d_in=I, d_out=O, d_sae=N, k=K, dtype="float64", **kw)))


def step_input(x: torch.Tensor, y: torch.Tensor, dead: torch.Tensor | None) -> TrainStepInput:
    return TrainStepInput(
        sae_in=torch.cat([x, y], dim=-1),
        coefficients={},
        dead_neuron_mask=dead,
        n_training_steps=0,
        is_logging_step=False,
    )


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(B, I, dtype=DT, generator=generator)
    y = torch.randn(B, O, dtype=DT, generator=generator)
    return x, y


def mask(dead: list[int] | None = None, live: list[int] | None = None) -> torch.Tensor:
    """A dead mask naming either the dead experts or the live ones."""
    m = torch.zeros(N, dtype=torch.bool) if dead is not None else torch.ones(N, dtype=torch.bool)
    m[dead if dead is not None else live] = dead is not None
    return m


def topk_dense(pre: torch.Tensor, k: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Dense codes: the top k of ReLU(pre) (among ``allowed`` units only), zero elsewhere."""
    if allowed is not None:
        pre = torch.where(allowed, pre, -torch.inf)
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())


def normalized_mse(error: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The main loss's weighting: squared error over the target token's L2 norm, mean."""
    return (error**2 / y.norm(dim=-1, keepdim=True)).mean()


def dense_mxd_losses(layer, x: torch.Tensor, y: torch.Tensor, dead: torch.Tensor):
    """Main and auxiliary loss written from the formulas, dense over every expert."""
    z = F.gelu(x @ layer.W_enc + layer.b_enc)
    shared = z @ layer.W_dec  # Dᵀz
    pre = x @ layer.W_gate + layer.b_gate
    y_hat = (topk_dense(pre, K) @ layer.W_experts) * shared + layer.b_dec
    n_dead = int(dead.sum())
    a_dead = topk_dense(pre, min(AUX_K, n_dead), allowed=dead)
    e_hat = (a_dead @ layer.W_experts) * shared.detach()
    residual = (y - y_hat).detach()
    coefficient = layer.cfg.dead_feature_aux_coefficient
    aux = coefficient * min(n_dead / AUX_K, 1.0) * normalized_mse(e_hat - residual, y)
    return normalized_mse(y_hat - y, y), aux


def dense_transcoder_aux(layer, x: torch.Tensor, y: torch.Tensor, dead: torch.Tensor):
    pre = x @ layer.W_enc + layer.b_enc
    y_hat = topk_dense(pre, K) @ layer.W_dec + layer.b_dec
    if hasattr(layer, "W_skip"):
        y_hat = y_hat + x @ layer.W_skip.T
    n_dead = int(dead.sum())
    e_hat = topk_dense(pre, min(AUX_K, n_dead), allowed=dead) @ layer.W_dec
    error = e_hat - (y - y_hat).detach()
    coefficient = layer.cfg.dead_feature_aux_coefficient
    return coefficient * min(n_dead / AUX_K, 1.0) * normalized_mse(error, y)


def project_tangent(grad: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    return grad - (grad * experts).sum(-1, keepdim=True) * experts


# --- the option off ------------------------------------------------------------------------


def test_option_off_is_the_papers_step_and_equals_option_on_with_nothing_dead() -> None:
    layer = make_mxd()
    x, y = data()
    off = layer.training_forward_pass(step_input(x, y, mask(dead=[])))
    assert set(off.losses) == {"normalized_mse_loss"}
    expected, _ = dense_mxd_losses(layer, x, y, mask(dead=[0]))
    torch.testing.assert_close(off.loss, expected)
    off.loss.backward()
    g_off = grads_of(layer)
    zero_grads(layer)

    layer.cfg.dead_feature_aux_k = AUX_K  # same weights, option on, nothing flagged dead
    for dead in (mask(dead=[]), None):
        on = layer.training_forward_pass(step_input(x, y, dead))
        assert on.losses[AUX].item() == 0.0
        torch.testing.assert_close(on.loss, off.loss, rtol=0, atol=0)
        torch.testing.assert_close(on.sae_out, off.sae_out, rtol=0, atol=0)
        on.loss.backward()
        g_on = grads_of(layer)
        zero_grads(layer)
        assert set(g_on) == set(g_off)
        for name, grad in g_off.items():
            torch.testing.assert_close(g_on[name], grad, rtol=0, atol=0, msg=name)


# --- the MxD's auxiliary loss --------------------------------------------------------------

# most experts dead (n_dead ≥ aux_k: full weight), and a few dead (n_dead < aux_k: scaled down)
DEAD_MASKS = {
    "all_but_six_dead": mask(live=[0, 3, 9, 20, 33, 41]),
    "five_dead": mask(dead=[1, 7, 8, 30, 44]),
}


@pytest.mark.parametrize("which", list(DEAD_MASKS))
def test_mxd_aux_loss_equals_dense_formula(which: str) -> None:
    dead = DEAD_MASKS[which]
    layer = make_mxd(dead_feature_aux_k=AUX_K, dead_feature_aux_coefficient=0.25)
    x, y = data(1)
    out = layer.training_forward_pass(step_input(x, y, dead))
    main, aux = dense_mxd_losses(layer, x, y, dead)
    assert aux > 0
    torch.testing.assert_close(out.losses["normalized_mse_loss"], main)
    torch.testing.assert_close(out.losses[AUX], aux)
    torch.testing.assert_close(out.loss, main + aux)


@pytest.mark.parametrize("which", list(DEAD_MASKS))
def test_mxd_aux_gradient_reaches_only_dead_experts_gate_and_vectors(which: str) -> None:
    dead = DEAD_MASKS[which]
    layer = make_mxd(dead_feature_aux_k=AUX_K)
    x, y = data(2)
    layer.training_forward_pass(step_input(x, y, dead)).losses[AUX].backward()
    grads = grads_of(layer)
    assert set(grads) == {"W_gate", "b_gate", "W_experts"}  # not D, E, b_E or the output bias
    live = ~dead
    assert grads["W_gate"][:, live].abs().max() == 0 and grads["b_gate"][live].abs().max() == 0
    assert grads["W_experts"][live].abs().max() == 0
    assert grads["W_gate"][:, dead].abs().max() > 0 and grads["W_experts"][dead].abs().max() > 0

    # the same gradients through autograd on the dense formula (C's projected on its sphere)
    zero_grads(layer)
    dense_mxd_losses(layer, x, y, dead)[1].backward()
    expected = grads_of(layer)
    torch.testing.assert_close(grads["W_gate"], expected["W_gate"])
    torch.testing.assert_close(grads["b_gate"], expected["b_gate"])
    experts = layer.W_experts.detach()
    torch.testing.assert_close(grads["W_experts"], project_tangent(expected["W_experts"], experts))


# --- the TopK transcoders' auxiliary loss --------------------------------------------------


@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_aux_loss_and_gradient_equal_dense_formula(skip: bool) -> None:
    dead = DEAD_MASKS["all_but_six_dead"]
    layer = make_transcoder(skip, dead_feature_aux_k=AUX_K)
    x, y = data(3)
    aux = layer.training_forward_pass(step_input(x, y, dead)).losses[AUX]
    torch.testing.assert_close(aux, dense_transcoder_aux(layer, x, y, dead))
    aux.backward()
    grads = grads_of(layer)
    assert set(grads) == {"W_enc", "b_enc", "W_dec"}  # not the skip path or the output bias
    live = ~dead
    assert grads["W_enc"][:, live].abs().max() == 0 and grads["W_dec"][live].abs().max() == 0
    zero_grads(layer)
    dense_transcoder_aux(layer, x, y, dead).backward()
    for name, grad in grads_of(layer).items():
        torch.testing.assert_close(grads[name], grad, msg=name)


# --- config and saving ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dead_feature_aux_k": -1}, "dead_feature_aux_k=-1 must be between 0"),
        ({"dead_feature_aux_k": N + 1}, "dead_feature_aux_k=51 must be between 0"),
        ({"dead_feature_aux_coefficient": -0.1}, "must be non-negative"),
    ],
)
def test_bad_aux_settings_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mxd.MxDTrainingSAEConfig(d_in=I, n_experts=N, k=K, **kwargs)


def test_option_is_off_by_default_and_training_only(tmp_path: Path) -> None:
    assert mxd.MxDTrainingSAEConfig(d_in=I, n_experts=N, k=K).dead_feature_aux_k == 0
    assert mxd.TopKTranscoderTrainingSAEConfig(d_in=I, d_sae=N, k=K).dead_feature_aux_k == 0

    layer = make_mxd(dead_feature_aux_k=AUX_K, dead_feature_aux_coefficient=0.5)
    restored = mxd.MxDTrainingSAEConfig.from_dict(layer.cfg.to_dict())
    assert (restored.dead_feature_aux_k, restored.dead_feature_aux_coefficient) == (AUX_K, 0.5)

    plain = make_mxd()
    plain.load_state_dict(layer.state_dict())
    for name, trained in (("with", layer), ("without", plain)):
        trained.eval().save_inference_model(tmp_path / name)
    saved = {
        name: json.loads((tmp_path / name / "cfg.json").read_text()) for name in ("with", "without")
    }
    assert "dead_feature_aux_k" not in saved["with"]  # the inference config does not carry it
    details = saved["with"]["metadata"]["training_architecture_details"]
    assert details["dead_feature_aux_k"] == AUX_K  # recorded as training provenance only
    assert set(saved["with"]) == set(saved["without"])

    x = torch.randn(7, I, dtype=DT)
    loaded = {name: SAE.load_from_disk(tmp_path / name) for name in ("with", "without")}
    assert type(loaded["with"]) is mxd.MxD
    configs = [{**sae.cfg.to_dict(), "metadata": None} for sae in loaded.values()]
    assert configs[0] == configs[1]
    with torch.no_grad():
        torch.testing.assert_close(loaded["with"](x), loaded["without"](x), rtol=0, atol=0)
        torch.testing.assert_close(loaded["with"](x), layer(x), rtol=0, atol=0)


# --- training ------------------------------------------------------------------------------


def test_training_run_with_the_option_reports_the_aux_loss(tiny_model, text_dataset, tmp_path):
    started = time.time()
    cfg = runner_config(
        "mxd",
        hook_name="blocks.1.ln2.hook_normalized",
        d_in=32,
        n_experts=256,
        k=4,
        d_hidden=128,
        lr=3e-3,
        dead_feature_aux_k=16,
        dead_feature_window=2,  # experts count as dead after 2 silent steps
        training_tokens=256 * 12,
        context_size=32,
        train_batch_size_tokens=256,
        store_batch_size_prompts=8,
        n_batches_in_buffer=8,
        checkpoint_path=None,
        output_path=None,
        log_to_wandb=True,
        wandb_log_frequency=1,
        eval_every_n_wandb_logs=1000,
        wandb_project="mxd-test",
        verbose=False,
    )
    runner = PairedTrainingRunner(cfg, override_model=tiny_model, override_dataset=text_dataset)
    trained = runner.run()
    run_file = wandb_run_file_since(started)
    aux = [row[f"losses/{AUX}"] for row in wandb_history(run_file) if f"losses/{AUX}" in row]
    assert len(aux) >= 10 and aux[0] == 0.0  # nothing can be dead at the first step
    assert all(torch.isfinite(torch.tensor(aux))) and max(aux) > 0
    trained.save_inference_model(tmp_path / "out")
    assert type(SAE.load_from_disk(tmp_path / "out")) is mxd.MxD
