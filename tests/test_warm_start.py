"""Warm starts from the dense MLP do at step 0 what they promise, checked against
TransformerLens's own MLP on the bundled models (folded and unfolded norms)."""

from __future__ import annotations

import pytest
import torch

import mxd_saelens as mxd
from mxd_saelens import zoo
from mxd_saelens.hooks import mlp_shape
from mxd_saelens.warm_start import check_init, mlp_weights, warm_start_

LAYER = 2


def _captured(model, tokens):
    names = [f"blocks.{LAYER}.ln2.hook_normalized", f"blocks.{LAYER}.mlp.hook_post"]
    names.append(f"blocks.{LAYER}.hook_mlp_out")
    _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=LAYER + 1)
    return [cache[n].reshape(-1, cache[n].shape[-1]) for n in names]


def _tokens(model):
    return model.to_tokens(["The function returns a list of", "Le chat dort sur le canapé"])


def _mxd_for(model, n_experts: int = 96, k: int = 8):
    cfg = mxd.MxDTrainingSAEConfig(
        d_in=model.cfg.d_model, n_experts=n_experts, k=k, **mlp_shape(model)
    )
    return mxd.MxDTrainingSAE(cfg)


@pytest.mark.parametrize("name", ["tiny-gelu", "tiny-gated"])
@pytest.mark.parametrize("fold_ln", [True, False])
@torch.no_grad()
def test_encoder_init_gives_the_mlps_hidden_units(name: str, fold_ln: bool) -> None:
    model = zoo.load(name, fold_ln=fold_ln)
    x, hidden, _ = _captured(model, _tokens(model))
    layer = warm_start_(_mxd_for(model), mlp_weights(model, LAYER), "mlp_encoder")
    # a GatedMLP adds b_in after its gating product; an MxD's GLU has no such term
    b_in = model.blocks[LAYER].mlp.b_in if model.cfg.gated_mlp else 0.0
    torch.testing.assert_close(layer.hidden(x) + b_in, hidden, rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(layer.W_dec) == 0  # D = 0, as in the paper's init


@pytest.mark.parametrize("name", ["tiny-gelu", "tiny-gated"])
@torch.no_grad()
def test_full_init_reproduces_the_mlp_up_to_each_tokens_expert_scale(name: str) -> None:
    """With no noise every expert is the same copy of the MLP: the output is
    b_out + r_t·(MLP(x) − b_out) with r_t = the entry of Cᵀa over its mean on the samples."""
    model = zoo.load(name)
    x, _, y = _captured(model, _tokens(model))
    layer = _mxd_for(model)
    warm_start_(layer, mlp_weights(model, LAYER), "mlp", sample_inputs=x, noise=0.0)
    mixed = layer.encode(x) @ layer.W_experts  # [T, O], a constant row per token
    r = mixed.mean(-1, keepdim=True) / mixed.mean()
    torch.testing.assert_close(mixed, mixed[:, :1].expand_as(mixed), rtol=1e-4, atol=1e-6)
    b_out = mlp_weights(model, LAYER).b_out
    torch.testing.assert_close(layer(x), b_out + r * (y - b_out), rtol=1e-3, atol=1e-4)
    assert float(r.mean()) == pytest.approx(1.0, rel=1e-5)


@torch.no_grad()
def test_noise_makes_experts_distinct_and_keeps_them_unit_norm() -> None:
    model = zoo.load("tiny-gelu")
    x, _, _ = _captured(model, _tokens(model))
    layer = _mxd_for(model)
    warm_start_(layer, mlp_weights(model, LAYER), "mlp", sample_inputs=x, noise=0.5, seed=3)
    norms = layer.W_experts.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    cosines = layer.W_experts @ layer.W_experts.T
    off_diagonal = cosines[~torch.eye(len(cosines), dtype=torch.bool)]
    assert 0.5 < float(off_diagonal.mean()) < 0.95  # near the shared direction, not equal


def test_paper_init_is_untouched_and_bad_requests_are_refused() -> None:
    model = zoo.load("tiny-gelu")
    layer = _mxd_for(model)
    before = {n: p.clone() for n, p in layer.named_parameters()}
    warm_start_(layer, mlp_weights(model, LAYER), "paper")
    for name, value in layer.named_parameters():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="init='warm'"):
        check_init("warm")
    with pytest.raises(ValueError, match="sample inputs"):
        warm_start_(layer, mlp_weights(model, LAYER), "mlp")
    narrow = mxd.MxDTrainingSAE(mxd.MxDTrainingSAEConfig(d_in=128, n_experts=32, k=4, d_hidden=256))
    with pytest.raises(ValueError, match="d_hidden"):
        warm_start_(narrow, mlp_weights(model, LAYER), "mlp_encoder")


@pytest.mark.parametrize("init", ["mlp_encoder", "mlp"])
def test_the_runners_start_the_layer_from_the_models_mlp(init: str, tmp_path) -> None:
    """Through the single and the multi-layer runner: zero training tokens after the start
    are not possible, so train a few steps at a learning rate too small to move anything."""
    from mxd_saelens.multi_runner import MultiPairedTrainingRunner
    from mxd_saelens.runner import PairedTrainingRunner

    model = zoo.load("tiny-gelu")
    cfg = mxd.runner_config(
        "mxd", model_name="tiny-gelu", dataset_path="zoo", layer=LAYER, d_in=128,
        n_experts=96, k=8, init=init, lr=1e-12, training_tokens=2048,
        train_batch_size_tokens=1024, context_size=128, log_to_wandb=False,
        checkpoint_path=None, verbose=False, **mlp_shape(model),
    )  # fmt: skip
    expected = mlp_weights(model, LAYER)
    single = PairedTrainingRunner(cfg, override_model=model).run()
    multi = MultiPairedTrainingRunner({"a": cfg}, override_model=model).run()["a"]
    for layer in (single, multi):
        torch.testing.assert_close(layer.W_enc, expected.E, rtol=1e-4, atol=1e-6)
        if init == "mlp":
            torch.testing.assert_close(layer.b_dec, expected.b_out, rtol=1e-4, atol=1e-6)
            ratio = layer.W_dec / expected.D
            torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-3, atol=1e-6)
        else:
            assert float(layer.W_dec.abs().max()) < 1e-6
