"""Dashboards: every number on the page against an independent computation, and a page that
needs nothing from the network."""

from __future__ import annotations

import re

import pytest
import torch

import mxd_saelens as mxd
from mxd_saelens import zoo
from mxd_saelens.cli.main import main
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.reading.analysis import logit_direction, mean_hidden
from mxd_saelens.reading.dashboard import collect, render, write_dashboard
from mxd_saelens.reading.directions import output_directions
from tests.helpers import randomize_

HOOK_IN, HOOK_OUT = "blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out"


def _layer(architecture: str):
    if architecture == "mxd":
        cfg = mxd.MxDConfig(d_in=128, n_experts=64, k=8, d_hidden=512, activation="gelu_tanh")
        layer = mxd.MxD(cfg)
    else:
        layer = mxd.TopKTranscoder(mxd.TopKTranscoderConfig(d_in=128, d_out=128, d_sae=64, k=8))
    randomize_(layer, seed=1, scale=0.1)
    layer.cfg.metadata.hook_name, layer.cfg.metadata.hook_name_out = HOOK_IN, HOOK_OUT
    layer.cfg.metadata.model_name = "tiny-gelu"
    return layer


@pytest.fixture(scope="module")
def model():
    return zoo.load("tiny-gelu")


@pytest.fixture(scope="module")
def tokens(model):
    return token_sequences(model, "zoo:heldout", 64, n_sequences=12)


@pytest.mark.parametrize("architecture", ["mxd", "topk_transcoder"])
@torch.no_grad()
def test_the_numbers_match_an_independent_computation(model, tokens, architecture):
    layer = _layer(architecture)
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK_IN])
    codes = layer.encode(cache[HOOK_IN])  # [seq, pos, 64]
    real = tokens != model.tokenizer.bos_token_id
    features = [3, 17]
    stats = collect(model, layer, features, tokens, n_examples=4)
    for feature, s in zip(features, stats, strict=True):
        acts = codes[..., feature][real]
        assert s.frequency == pytest.approx(float((acts != 0).float().mean()))
        assert sum(s.histogram[1]) == int((acts != 0).sum())
        if s.contexts:
            assert s.contexts[0].activation == pytest.approx(float(acts.max()), rel=1e-5)
            c = s.contexts[0]
            assert c.activations[c.centre] == pytest.approx(c.activation, rel=1e-5)
        hidden = mean_hidden(model, layer, tokens) if architecture == "mxd" else None
        logits = logit_direction(model, output_directions(layer, hidden)[feature])
        promoted = [model.to_string(torch.tensor([i])) for i in logits.topk(10).indices]
        assert [t for t, _ in s.promoted] == promoted
        if architecture == "mxd":
            expected = torch.linalg.svdvals(layer.expert_weights(feature).double())
            torch.testing.assert_close(
                torch.tensor(s.singular_values, dtype=torch.float64), expected
            )
            assert s.rank == 128
        else:
            assert s.singular_values == [] and s.rank is None


def test_the_page_is_self_contained_and_escapes_tokens(model, tokens, tmp_path):
    layer = _layer("mxd")
    stats = collect(model, layer, [5], tokens, n_examples=3)
    stats[0].contexts[0].tokens[0] = "<script>alert(1)</script>"
    page = render(stats, "a <b> title", mxd=True)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page)
    assert 'id="feature-5"' in page and "singular values" in page
    path = write_dashboard(layer, model, [1, 2], tokens, tmp_path / "d.html")
    text = path.read_text()
    assert 'id="feature-1"' in text and 'id="feature-2"' in text


def test_the_command_refuses_a_feature_out_of_range_before_loading_the_model(tmp_path, capsys):
    layer = _layer("mxd")
    layer.save_model(tmp_path / "layer")
    code = main(["dashboard", str(tmp_path / "layer"), "--features", "3", "64"])
    assert code == 2
    assert "numbered 0 to 63" in capsys.readouterr().err
    assert not (tmp_path / "dashboard.html").exists()
    out = tmp_path / "page.html"
    flags = ["--features", "3", "--n_sequences", "4", "--context_size", "32", "--out", str(out)]
    assert main(["dashboard", str(tmp_path / "layer"), *flags]) == 0
    assert 'id="feature-3"' in out.read_text()
