"""Warm starts from the dense MLP do at step 0 what they promise, checked against
TransformerLens's own MLP on the bundled models (folded and unfolded norms)."""

from __future__ import annotations

import pytest
import torch

import mxd_saelens as mxd
from mxd_saelens import zoo
from mxd_saelens.data.hooks import mlp_shape
from mxd_saelens.training.warm_start import (
    check_init,
    mlp_weights,
    warm_start_,
    warm_start_transcoder_,
)

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
    from mxd_saelens.training.runner import MultiPairedTrainingRunner, PairedTrainingRunner

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


def _transcoder_for(model, d_sae: int = 768, k: int = 8):
    cfg = mxd.TopKTranscoderTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, k=k)
    return mxd.TopKTranscoderTrainingSAE(cfg)


@pytest.mark.parametrize("fold_ln", [True, False])
@torch.no_grad()
def test_transcoder_encoder_init_gives_the_mlps_pre_activations(fold_ln: bool) -> None:
    model = zoo.load("tiny-gelu", fold_ln=fold_ln)
    tokens = _tokens(model)
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{LAYER}.mlp.hook_pre")
    pre = cache[f"blocks.{LAYER}.mlp.hook_pre"].reshape(-1, model.cfg.d_mlp)
    x, _, _ = _captured(model, tokens)
    layer = _transcoder_for(model)
    decoder_before = layer.W_dec.clone()
    warm_start_transcoder_(layer, mlp_weights(model, LAYER), "mlp_encoder")
    ours = x @ layer.W_enc + layer.b_enc
    torch.testing.assert_close(ours[:, : model.cfg.d_mlp], pre, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.W_dec, decoder_before, rtol=0, atol=0)


@torch.no_grad()
def test_transcoder_full_init_reads_out_its_selected_mlp_neurons() -> None:
    """Output = the MLP's b_out + Σ over the token's top-k latents that are MLP neurons of
    ReLU(pre)·W_out, computed here from TransformerLens's own hook_pre and W_out."""
    model = zoo.load("tiny-gelu")
    tokens = _tokens(model)
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{LAYER}.mlp.hook_pre")
    pre_mlp = cache[f"blocks.{LAYER}.mlp.hook_pre"].reshape(-1, model.cfg.d_mlp)
    x, _, _ = _captured(model, tokens)
    layer = warm_start_transcoder_(_transcoder_for(model), mlp_weights(model, LAYER), "mlp")
    h = model.cfg.d_mlp
    other = (x @ layer.W_enc + layer.b_enc)[:, h:]  # the random latents, competing for slots
    values, index = torch.cat([pre_mlp, other], -1).relu().topk(8, dim=-1)
    neuron = index < h
    mlp = model.blocks[LAYER].mlp
    rows = mlp.W_out[index.clamp_max(h - 1)] * (values * neuron)[..., None]  # [T, k, d_out]
    expected = mlp.b_out + rows.sum(1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(layer.W_dec[h:]) == 0
    assert bool(neuron.any()) and not bool(neuron.all())  # both kinds of latent were selected


def test_transcoder_init_refuses_gated_mlps_and_narrow_layers() -> None:
    gated = zoo.load("tiny-gated")
    with pytest.raises(ValueError, match="gated MLP"):
        warm_start_transcoder_(_transcoder_for(gated), mlp_weights(gated, LAYER), "mlp")
    model = zoo.load("tiny-gelu")
    with pytest.raises(ValueError, match="d_sae >= the MLP's d_mlp"):
        warm_start_transcoder_(_transcoder_for(model, 256), mlp_weights(model, LAYER), "mlp")
    with pytest.raises(ValueError, match="init='warm'"):
        mxd.TopKTranscoderTrainingSAEConfig(d_in=128, d_sae=768, k=8, init="warm")


def test_the_runner_starts_a_transcoder_from_the_models_mlp() -> None:
    from mxd_saelens.training.runner import PairedTrainingRunner

    model = zoo.load("tiny-gelu")
    cfg = mxd.runner_config(
        "topk_transcoder", model_name="tiny-gelu", dataset_path="zoo", layer=LAYER, d_in=128,
        d_sae=768, k=8, init="mlp", lr=1e-12, training_tokens=2048,
        train_batch_size_tokens=1024, context_size=128, log_to_wandb=False,
        checkpoint_path=None, verbose=False,
    )  # fmt: skip
    layer = PairedTrainingRunner(cfg, override_model=model).run()
    expected = mlp_weights(model, LAYER)
    h = model.cfg.d_mlp
    torch.testing.assert_close(layer.W_enc[:, :h], expected.E, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(layer.W_dec[:h], expected.D, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(layer.b_dec, expected.b_out, rtol=1e-4, atol=1e-6)
