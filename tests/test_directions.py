"""Feature directions in SAELens's shapes, checked against what the layers compute."""

from __future__ import annotations

import pytest
import torch

import mxd_saelens as mxd
from mxd_saelens.reading.directions import input_directions, output_directions
from tests.helpers import randomize_
from tests.test_mxd_math import H, I, N, O, make_mxd


def _transcoder(architecture: str) -> torch.nn.Module:
    cfg_cls, cls = {
        "topk_transcoder": (mxd.TopKTranscoderConfig, mxd.TopKTranscoder),
        "topk_skip_transcoder": (mxd.TopKSkipTranscoderConfig, mxd.TopKSkipTranscoder),
    }[architecture]
    cfg = cfg_cls(d_in=I, d_out=O, d_sae=N, k=5, dtype="float64")
    return randomize_(cls(cfg))


@pytest.mark.parametrize("glu", [False, True])
def test_mxd_directions_are_what_one_expert_adds_and_what_its_gate_reads(glu: bool) -> None:
    layer = make_mxd(glu=glu, training=False)
    x = torch.randn(7, I, dtype=torch.float64)
    z = layer.hidden(x)  # [7, H]
    inputs = input_directions(layer)
    assert inputs.shape == (I, N)
    for token in range(7):
        outputs = output_directions(layer, hidden=z[token])
        assert outputs.shape == (N, O)
        for n in (0, 17, N - 1):
            one = torch.zeros(N, dtype=torch.float64)
            one[n] = 1.0
            added = layer.decode(one[None], hidden=z[token][None]) - layer.decode(
                torch.zeros(1, N, dtype=torch.float64), hidden=z[token][None]
            )
            torch.testing.assert_close(outputs[n], added[0])
            # the same through the expert's own H×O matrix
            torch.testing.assert_close(outputs[n], z[token] @ layer.expert_weights(n))
    # the gate's pre-activations, read back from the coefficients that fired
    codes = layer.encode(x)
    fired = codes != 0
    pre = x @ inputs + layer.b_gate
    torch.testing.assert_close(codes[fired], pre[fired])


def test_mxd_output_directions_at_the_mean_hidden_units_are_the_mean_directions() -> None:
    layer = make_mxd(training=False)
    z = layer.hidden(torch.randn(9, I, dtype=torch.float64))
    mean_of_directions = torch.stack([output_directions(layer, hidden=row) for row in z]).mean(0)
    torch.testing.assert_close(output_directions(layer, hidden=z.mean(0)), mean_of_directions)


def test_mxd_w_dec_is_not_indexed_by_expert_and_the_functions_say_what_is() -> None:
    layer = make_mxd(training=False)
    assert layer.W_dec.shape == (H, O) and layer.W_gate.shape == (I, N)
    with pytest.raises(ValueError, match="hidden units"):
        output_directions(layer)
    with pytest.raises(ValueError, match=rf"\({H},\)"):
        output_directions(layer, hidden=torch.zeros(H + 1, dtype=torch.float64))


@pytest.mark.parametrize("architecture", ["topk_transcoder", "topk_skip_transcoder"])
def test_transcoder_directions_are_its_encoder_columns_and_decoder_rows(architecture: str) -> None:
    layer = _transcoder(architecture)
    torch.testing.assert_close(input_directions(layer), layer.W_enc)
    torch.testing.assert_close(output_directions(layer), layer.W_dec)
    assert input_directions(layer).shape == (I, N)
    assert output_directions(layer).shape == (N, O)
