"""TopK and ReLU transcoders against independent computations, and SAELens's stock classes."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput

import mxd_saelens as mxd
from tests.helpers import grads_of, randomize_

I, O, S, K = 12, 10, 64, 6
DT = torch.float64


def step_input(x: torch.Tensor, y: torch.Tensor, l1: float = 0.0) -> TrainStepInput:
    return TrainStepInput(
        sae_in=torch.cat([x, y], dim=-1),
        coefficients={"l1": l1},
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )


def reference_topk_transcoder(layer, x: torch.Tensor) -> torch.Tensor:
    pre = torch.relu(x @ layer.W_enc + layer.b_enc)
    top = pre.topk(K, dim=-1)
    codes = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    out = codes @ layer.W_dec + layer.b_dec
    if hasattr(layer, "W_skip"):
        out = out + x @ layer.W_skip.T
    return out


@pytest.mark.parametrize(
    ("cls", "cfg_cls"),
    [
        (mxd.TopKTranscoderTrainingSAE, mxd.TopKTranscoderTrainingSAEConfig),
        (mxd.TopKSkipTranscoderTrainingSAE, mxd.TopKSkipTranscoderTrainingSAEConfig),
    ],
)
def test_topk_transcoder_fast_path_matches_reference_in_outputs_and_gradients(cls, cfg_cls) -> None:
    layer = randomize_(cls(cfg_cls(d_in=I, d_out=O, d_sae=S, k=K, dtype="float64")))
    x = torch.randn(40, I, dtype=DT)
    y = torch.randn(40, O, dtype=DT)

    out = layer.training_forward_pass(step_input(x, y))
    expected = reference_topk_transcoder(layer, x)
    torch.testing.assert_close(out.sae_out, expected)
    assert (out.feature_acts.to_dense() != 0).sum(-1).eq(K).all()
    out.loss.backward()
    fast = grads_of(layer)
    for p in layer.parameters():
        p.grad = None
    (
        (reference_topk_transcoder(layer, x) - y) ** 2 / y.norm(dim=-1, keepdim=True)
    ).mean().backward()
    reference = grads_of(layer)
    assert set(fast) == set(reference)
    for name in reference:
        torch.testing.assert_close(fast[name], reference[name], msg=name)
    # the forward (fast path) equals the dense encode/decode path
    dense = layer.decode(layer.encode(x))
    if hasattr(layer, "W_skip"):
        dense = dense + layer.skip_output(x)
    torch.testing.assert_close(layer(x), dense)


def test_skip_transcoders_start_with_zero_skip_and_decoder() -> None:
    for cls, cfg_cls in [
        (mxd.TopKSkipTranscoderTrainingSAE, mxd.TopKSkipTranscoderTrainingSAEConfig),
        (mxd.SkipTranscoderTrainingSAE, mxd.SkipTranscoderTrainingSAEConfig),
    ]:
        extra = {"k": K} if "TopK" in cls.__name__ else {}
        layer = cls(cfg_cls(d_in=I, d_out=O, d_sae=S, **extra))
        assert layer.W_skip.shape == (O, I)
        assert torch.count_nonzero(layer.W_skip) == 0 and torch.count_nonzero(layer.W_dec) == 0


@pytest.mark.parametrize("skip", [False, True])
def test_relu_transcoder_training_loss_includes_decoder_weighted_l1(skip: bool) -> None:
    cls, cfg_cls = (
        (mxd.SkipTranscoderTrainingSAE, mxd.SkipTranscoderTrainingSAEConfig)
        if skip
        else (mxd.TranscoderTrainingSAE, mxd.TranscoderTrainingSAEConfig)
    )
    layer = randomize_(cls(cfg_cls(d_in=I, d_out=O, d_sae=S, dtype="float64", loss="mse")))
    x = torch.randn(30, I, dtype=DT)
    y = torch.randn(30, O, dtype=DT)
    out = layer.training_forward_pass(step_input(x, y, l1=0.3))
    codes = torch.relu(x @ layer.W_enc + layer.b_enc)
    pred = codes @ layer.W_dec + layer.b_dec + (x @ layer.W_skip.T if skip else 0)
    mse = ((pred - y) ** 2).mean()
    l1 = 0.3 * (codes * layer.W_dec.norm(dim=-1)).sum(-1).mean()
    torch.testing.assert_close(out.losses["mse_loss"], mse)
    torch.testing.assert_close(out.losses["l1_loss"], l1)
    torch.testing.assert_close(out.loss, mse + l1)
    assert layer.get_coefficients()["l1"].value == layer.cfg.l1_coefficient


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": S + 1}, "k=65 must be between 1 and d_sae=64"),
        ({"k": -1}, "k=-1 must be between 1"),
        ({"d_sae": 0, "k": 1}, "must be positive"),
    ],
)
def test_topk_transcoder_bad_configs(kwargs: dict, message: str) -> None:
    base = {"d_in": I, "d_out": O, "d_sae": S, "k": K}
    with pytest.raises(ValueError, match=message):
        mxd.TopKTranscoderTrainingSAEConfig(**{**base, **kwargs})
    with pytest.raises(ValueError, match=message):
        mxd.TopKTranscoderConfig(**{**base, **kwargs})


def test_packed_rows_of_the_wrong_width_or_with_nans_are_rejected() -> None:
    layer = mxd.TopKTranscoderTrainingSAE(
        mxd.TopKTranscoderTrainingSAEConfig(d_in=I, d_out=O, d_sae=S, k=K)
    )
    bad = TrainStepInput(
        sae_in=torch.randn(4, I),
        coefficients={},
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )
    with pytest.raises(ValueError, match=r"width d_in \+ d_out = 12 \+ 10 = 22, got width 12"):
        layer.training_forward_pass(bad)
    x, y = torch.randn(4, I), torch.randn(4, O)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        layer.training_forward_pass(step_input(x, y))
