"""Parameter matching for every architecture, against the layers actually built."""

from __future__ import annotations

import pytest

import mxd_saelens as mxd
from mxd_saelens.saes.params import matched_size, parameter_count, transcoder_parameter_count

I, H, D_SAE = 64, 256, 2048


def _build(architecture: str, glu: bool, size: dict[str, int]):
    if architecture == "mxd":
        cfg = mxd.MxDConfig(d_in=I, d_hidden=H, k=4, glu=glu, **size)
        return mxd.MxD(cfg)
    cls, cfg_cls = {
        "topk_transcoder": (mxd.TopKTranscoder, mxd.TopKTranscoderConfig),
        "topk_skip_transcoder": (mxd.TopKSkipTranscoder, mxd.TopKSkipTranscoderConfig),
    }[architecture]
    return cls(cfg_cls(d_in=I, d_out=I, k=4, **size))


@pytest.mark.parametrize(
    ("architecture", "glu"),
    [("mxd", False), ("mxd", True), ("topk_transcoder", False), ("topk_skip_transcoder", False)],
)
def test_matched_layers_have_the_transcoders_parameter_count(architecture: str, glu: bool):
    target = transcoder_parameter_count(I, D_SAE, I)
    size = matched_size(architecture, I, I, H, glu, D_SAE)
    built = parameter_count(_build(architecture, glu, size))
    if architecture == "mxd":
        # the paper's accounting counts d_sae encoder biases where an MxD has H
        target -= D_SAE - H
    assert abs(built - target) <= (2 * I + 1) // 2 + 1, (built, target)  # rounding only


def test_a_skip_transcoder_pays_for_its_skip_matrix_with_latents():
    plain = matched_size("topk_transcoder", I, I, H, False, D_SAE)["d_sae"]
    skip = matched_size("topk_skip_transcoder", I, I, H, False, D_SAE)["d_sae"]
    assert plain - skip == round(I * I / (2 * I + 1))
