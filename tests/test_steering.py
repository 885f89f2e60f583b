"""Steering through the layer's hook point, on layers trained on the small test model."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mxd_saelens.cli import research as research_cli
from mxd_saelens.reading.steering import (
    evaluate_steering,
    generate,
    promoted_token_ids,
    score_generations,
    steering,
)
from mxd_saelens.saes.loading import load_layer
from mxd_saelens.training.config import runner_config
from mxd_saelens.training.runner import PairedTrainingRunner

torch.set_num_threads(1)  # small tensors: one thread is fastest and immune to other load

LAYER = 1
SMALL_RUN = {
    "context_size": 32,
    "train_batch_size_tokens": 256,
    "store_batch_size_prompts": 8,
    "n_batches_in_buffer": 4,
    "n_eval_batches": 1,
    "eval_batch_size_prompts": 4,
    "log_to_wandb": False,
    "checkpoint_path": None,
    "verbose": False,
}
FIELDS = {
    "mxd": {"n_experts": 128, "k": 8, "activation": "gelu_tanh", "lr": 3e-3},
    "topk_transcoder": {"d_sae": 256, "k": 8, "lr": 3e-3},
}


def train_small_layer(
    model: Any, dataset: Any, architecture: str, out: Path, layer: int = LAYER, steps: int = 40
) -> Any:
    """A layer trained for a few steps through the runner, saved, and loaded back."""
    d_model, d_mlp = int(model.cfg.d_model), int(model.cfg.d_mlp)
    extra = {"d_hidden": d_mlp} if architecture == "mxd" else {}
    cfg = runner_config(
        architecture,
        model_name=str(model.cfg.model_name),
        layer=layer,
        d_in=d_model,
        training_tokens=256 * steps,
        output_path=str(out),
        **FIELDS[architecture],
        **extra,
        **SMALL_RUN,
    )
    PairedTrainingRunner(cfg, override_model=model, override_dataset=dataset).run()
    return load_layer(out)


@pytest.fixture(scope="module")
def layers(tiny_model, text_dataset, tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("steering_layers")
    return {a: train_small_layer(tiny_model, text_dataset, a, root / a) for a in FIELDS}


@pytest.fixture(scope="module")
def reference(tiny_model, heldout_tokens) -> torch.Tensor:
    return heldout_tokens[:8]


def busiest_code(model, layer, tokens) -> int:
    from mxd_saelens.reading.probing import LayerCodes

    return int((LayerCodes(layer).codes(model, tokens) != 0).sum((0, 1)).argmax())


@pytest.mark.parametrize("architecture", list(FIELDS))
def test_promoted_token_logprob_rises_with_strength(architecture, layers, tiny_model, reference):
    layer = layers[architecture]
    code = busiest_code(tiny_model, layer, reference)
    results = evaluate_steering(
        tiny_model,
        layer,
        code,
        strengths=[0.0, 2.0, 8.0, 32.0],
        n_samples=4,
        max_new_tokens=8,
        reference_tokens=reference,
    )
    logprobs = [r.promoted_logprob for r in results]
    assert all(b > a for a, b in itertools.pairwise(logprobs)), logprobs
    assert results[-1].promoted_fraction > results[0].promoted_fraction
    assert results[0].code_scale > 0
    assert len(results[0].generations) == 4 and len(results[0].promoted) == 10


@pytest.mark.parametrize("architecture", list(FIELDS))
def test_steering_adds_the_codes_output_change(architecture, layers, tiny_model, heldout_tokens):
    """Inside ``steering``, block L's MLP output moves by exactly s·(output of code n):
    s·c_n ⊙ (Dᵀz) for an MxD expert, s·W_dec[n] for a transcoder latent."""
    layer, code, strength = layers[architecture], 5, 3.0
    tokens = heldout_tokens[:2]
    hook_in, hook_out = f"blocks.{LAYER}.ln2.hook_normalized", f"blocks.{LAYER}.hook_mlp_out"
    _, clean = tiny_model.run_with_cache(tokens, names_filter=[hook_in, hook_out])
    with steering(tiny_model, layer, code, strength):
        # the steered forward's MLP input is the clean one: block L's MLP is the first change
        _, steered = tiny_model.run_with_cache(tokens, names_filter=[hook_out])
    with torch.no_grad():
        if architecture == "mxd":
            z = layer.hidden(clean[hook_in])
            expected = strength * layer.W_experts[code] * (z @ layer.W_dec)
        else:
            expected = strength * layer.W_dec[code].expand_as(clean[hook_out])
    torch.testing.assert_close(steered[hook_out] - clean[hook_out], expected, atol=1e-5, rtol=1e-4)


def test_zero_strength_is_the_unsteered_model(layers, tiny_model):
    layer = layers["mxd"]
    tokens = generate(tiny_model, layer, 3, 0.0, n_samples=3, max_new_tokens=6, seed=7)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        plain = tiny_model.generate(
            tiny_model.to_tokens("Let's talk about ").repeat(3, 1),
            max_new_tokens=6,
            stop_at_eos=False,
            verbose=False,
        )
    assert torch.equal(tokens, plain)


def test_scores_match_direct_computation(layers, tiny_model, reference):
    layer, code, strength = layers["mxd"], 2, 10.0
    tokens = generate(tiny_model, layer, code, strength, n_samples=3, max_new_tokens=5, seed=1)
    n_prompt = tiny_model.to_tokens("Let's talk about ").shape[1]
    promoted = promoted_token_ids(tiny_model, layer, code, reference, n_promoted=4)
    logprob, fraction, fluency = score_generations(
        tiny_model, layer, code, strength, tokens, n_prompt, promoted
    )
    generated = tokens[:, n_prompt:]
    clean = F.log_softmax(tiny_model(tokens)[:, n_prompt - 1 : -1], dim=-1)
    expected_ce = -clean.gather(-1, generated[..., None]).mean()
    assert fluency == pytest.approx(float(expected_ce), rel=1e-5)
    expected_fraction = sum(int(t) in promoted for t in generated.flatten()) / generated.numel()
    assert fraction == pytest.approx(expected_fraction)
    with steering(tiny_model, layer, code, strength):
        steered = F.log_softmax(tiny_model(tokens)[:, n_prompt - 1 : -1], dim=-1)
    assert logprob == pytest.approx(float(steered[..., promoted].mean()), rel=1e-5)


def test_judge_sees_prompt_and_generations(layers, tiny_model):
    calls = []

    def judge(prompt: str, generations: list[str]) -> float:
        calls.append((prompt, generations))
        return float(len(generations))

    results = evaluate_steering(
        tiny_model, layers["mxd"], 0, [0.0, 5.0], n_samples=2, max_new_tokens=3, judge=judge
    )
    assert [r.judge_score for r in results] == [2.0, 2.0]
    assert calls[0][0] == "Let's talk about " and calls[1][1] == results[1].generations


def test_hooks_are_removed_and_user_hooks_kept(layers, tiny_model):
    layer = layers["topk_transcoder"]
    seen = []
    layer.hook_sae_acts_post.add_hook(lambda acts, hook: seen.append(1))
    try:
        with steering(tiny_model, layer, 1, 1.0):
            tiny_model(tiny_model.to_tokens("the cat"))
        assert len(layer.hook_sae_acts_post.fwd_hooks) == 1
        assert seen
    finally:
        layer.hook_sae_acts_post.remove_hooks()
    assert not tiny_model.hook_dict[f"blocks.{LAYER}.hook_mlp_out"].fwd_hooks


def test_code_out_of_range(layers, tiny_model):
    with pytest.raises(IndexError, match="out of range: valid indices are 0 to 127"):
        evaluate_steering(tiny_model, layers["mxd"], 128, [1.0])


def test_steer_command(zoo_layer, capsys, tmp_path):
    out = tmp_path / "steer.json"
    research_cli.steer(
        [
            str(zoo_layer),
            "--expert",
            "3",
            "--strength",
            "5",
            "--n_samples",
            "2",
            "--max_new_tokens",
            "4",
            "--n_reference",
            "2",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "promoted tokens" in printed and "fluency CE" in printed
    rows = json.loads(out.read_text())
    assert [r["strength"] for r in rows] == [0.0, 5.0]
    assert all(len(r["generations"]) == 2 for r in rows)


@pytest.fixture(scope="module")
def zoo_layer(tmp_path_factory) -> Path:
    """A small MxD on the bundled model's default layer, saved."""
    from mxd_saelens import zoo

    model = zoo.load("tiny-gelu")
    out = tmp_path_factory.mktemp("zoo_layer") / "mxd"
    train_small_layer(
        model, zoo.load_corpus("heldout"), "mxd", out, layer=zoo.default_layer(), steps=10
    )
    return out
