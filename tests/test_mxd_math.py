"""The MxD layer against independent computations (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sae_lens.saes.sae import TrainStepInput
from transformer_lens import HookedTransformerConfig
from transformer_lens.components.mlps.gated_mlp import GatedMLP
from transformer_lens.components.mlps.mlp import MLP

import mxd_saelens as mxd
from tests.helpers import grads_of, randomize_, zero_grads

I, O, H, N, K = 12, 10, 24, 50, 5
DT = torch.float64


def make_mxd(glu: bool = False, activation: str = "gelu", training: bool = True, **kw):
    cls, cfg_cls = (
        (mxd.MxDTrainingSAE, mxd.MxDTrainingSAEConfig) if training else (mxd.MxD, mxd.MxDConfig)
    )
    cfg = cfg_cls(
        d_in=I,
        d_out=O,
        d_hidden=H,
        n_experts=N,
        k=K,
        glu=glu,
        activation=activation,
        dtype="float64",
        **kw,
    )
    return randomize_(cls(cfg))


def explicit_mixture(layer, x: torch.Tensor) -> torch.Tensor:
    """Σ_n a_n W_nᵀ z + b_out, written out expert by expert from the paper's definition."""
    act = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}[layer.cfg.activation]
    z = act(x @ layer.W_enc + layer.b_enc)
    if layer.cfg.glu:
        z = z * (x @ layer.W_glu + layer.b_glu)
    gate = torch.relu(x @ layer.W_gate + layer.b_gate)
    out = torch.zeros(x.shape[0], layer.cfg.d_out, dtype=DT)
    for t in range(x.shape[0]):
        top = torch.topk(gate[t], K).indices
        for n in top.tolist():
            w_n = layer.W_dec @ torch.diag(layer.W_experts[n])  # D·diag(c_n), H×O
            out[t] += gate[t, n] * (w_n.T @ z[t])
    return out + layer.b_dec


@pytest.mark.parametrize(("glu", "activation"), [(False, "gelu"), (True, "silu")])
def test_factorised_forward_equals_explicit_mixture(glu: bool, activation: str) -> None:
    layer = make_mxd(glu=glu, activation=activation, training=False)
    x = torch.randn(7, I, dtype=DT)
    torch.testing.assert_close(layer(x), explicit_mixture(layer, x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.forward_dense(x), explicit_mixture(layer, x))


def _single_expert_mxd(glu: bool, activation: str) -> mxd.MxD:
    cfg = mxd.MxDConfig(
        d_in=I,
        d_out=I,
        d_hidden=H,
        n_experts=1,
        k=1,
        glu=glu,
        activation=activation,
        dtype="float64",
    )
    layer = mxd.MxD(cfg)
    with torch.no_grad():
        layer.W_gate.zero_()
        layer.b_gate.fill_(1.0)  # a = ReLU(0·x + 1) = 1 for every token
        layer.W_experts.fill_(1.0)  # c = 1
    return layer


def _tl_cfg(gated: bool) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=1,
        d_model=I,
        d_head=4,
        n_ctx=8,
        d_mlp=H,
        d_vocab=10,
        act_fn="silu" if gated else "gelu_new",
        gated_mlp=gated,
        dtype=DT,
        normalization_type="LN",
    )


def test_single_expert_with_unit_c_is_transformerlens_mlp() -> None:
    """N = 1, c = 1: the MxD is the plain GELU MLP (I = O, as in a transformer)."""
    mlp = MLP(_tl_cfg(gated=False))
    randomize_(mlp, seed=1)
    layer = _single_expert_mxd(glu=False, activation="gelu_tanh")
    with torch.no_grad():
        layer.W_enc.copy_(mlp.W_in)
        layer.b_enc.copy_(mlp.b_in)
        layer.W_dec.copy_(mlp.W_out)
        layer.b_dec.copy_(mlp.b_out)
    x = torch.randn(2, 3, I, dtype=DT)
    torch.testing.assert_close(layer(x), mlp(x))


def test_glu_is_mxd_with_rank_one_experts() -> None:
    """A gated MLP (TransformerLens's own) equals (i) an MxD with N = 1, c = 1 and GLU hidden
    units, and (ii) a mixture of H rank-1 experts e_h d_hᵀ with coefficients φ(g_hᵀx)."""
    glu = GatedMLP(_tl_cfg(gated=True))
    randomize_(glu, seed=2)
    with torch.no_grad():
        glu.b_in.zero_()  # gated (Llama-style) MLPs have no hidden bias
    x = torch.randn(4, I, dtype=DT)
    expected = glu(x[None])[0]

    layer = _single_expert_mxd(glu=True, activation="silu")
    with torch.no_grad():
        layer.W_enc.copy_(glu.W_gate)  # φ is applied to TransformerLens's W_gate branch
        layer.W_glu.copy_(glu.W_in)
        layer.W_dec.copy_(glu.W_out)
        layer.b_dec.copy_(glu.b_out)
    torch.testing.assert_close(layer(x), expected)

    coefficients = F.silu(x @ glu.W_gate)  # [T, H]
    mixture = torch.zeros_like(expected)
    for h in range(H):
        w_h = torch.outer(glu.W_in[:, h], glu.W_out[h])  # I×O, rank 1
        assert torch.linalg.matrix_rank(w_h) == 1
        mixture += coefficients[:, h : h + 1] * (x @ w_h)
    torch.testing.assert_close(mixture + glu.b_out, expected)


def _step_input(x: torch.Tensor, y: torch.Tensor) -> TrainStepInput:
    return TrainStepInput(
        sae_in=torch.cat([x, y], dim=-1),
        coefficients={},
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )


@pytest.mark.parametrize("glu", [False, True])
def test_sparse_path_equals_dense_path_in_outputs_and_gradients(glu: bool) -> None:
    layer = make_mxd(glu=glu, activation="silu" if glu else "gelu")
    x = torch.randn(33, I, dtype=DT)
    y = torch.randn(33, O, dtype=DT)

    fast = layer.training_layer_output(x).output
    loss_fast = ((fast - y) ** 2).sum()
    loss_fast.backward()
    g_fast = grads_of(layer)
    zero_grads(layer)

    dense = layer.forward_dense(x)
    ((dense - y) ** 2).sum().backward()
    g_dense = grads_of(layer)

    torch.testing.assert_close(fast, dense)
    assert set(g_fast) == set(g_dense) and len(g_fast) == len(list(layer.parameters()))
    for name in g_dense:
        torch.testing.assert_close(g_fast[name], g_dense[name], msg=name)


def test_training_loss_and_tangent_gradient_match_independent_computation() -> None:
    layer = make_mxd()
    x = torch.randn(20, I, dtype=DT)
    y = torch.randn(20, O, dtype=DT)
    out = layer.training_forward_pass(_step_input(x, y))
    expected_pred = explicit_mixture(layer, x)
    expected_loss = ((expected_pred - y) ** 2 / y.norm(dim=-1, keepdim=True)).mean()
    torch.testing.assert_close(out.loss, expected_loss)
    torch.testing.assert_close(out.sae_in, y)  # the trainer's variance metrics see the target

    out.loss.backward()
    # the expert vectors' gradient has no component along the (unit) vectors themselves
    radial = (layer.W_experts.grad * layer.W_experts).sum(-1)
    torch.testing.assert_close(radial, torch.zeros_like(radial), atol=1e-12, rtol=0)
    # independent gradient: autograd through the explicit mixture, then projected
    c = layer.W_experts.detach().clone().requires_grad_(True)
    saved = layer.W_experts
    layer.W_experts = torch.nn.Parameter(c)
    ((explicit_mixture(layer, x) - y) ** 2 / y.norm(dim=-1, keepdim=True)).mean().backward()
    raw = layer.W_experts.grad
    projected = raw - (raw * c).sum(-1, keepdim=True) * c
    torch.testing.assert_close(saved.grad, projected.detach())


def test_exactly_k_coefficients_fire_and_experts_are_full_rank() -> None:
    layer = make_mxd(training=False)
    x = torch.randn(64, I, dtype=DT)
    a = layer.encode(x)
    assert a.shape == (64, N)
    assert ((a != 0).sum(-1) == K).all()
    assert torch.linalg.matrix_rank(layer.W_dec) == min(H, O)
    for n in (0, 17, N - 1):
        w_n = layer.expert_weights(n)
        assert w_n.shape == (H, O)
        torch.testing.assert_close(w_n, layer.W_dec @ torch.diag(layer.W_experts[n]))
        assert torch.linalg.matrix_rank(w_n) == min(H, O)
    with pytest.raises(IndexError, match="out of range"):
        layer.expert_weights(N)


def test_decode_of_encode_and_steering_through_the_hook_point() -> None:
    layer = make_mxd(training=False)
    x = torch.randn(6, I, dtype=DT)
    torch.testing.assert_close(layer.decode(layer.encode(x)), layer(x))
    z = layer.hidden(x)
    torch.testing.assert_close(layer.decode(layer.encode(x), hidden=z), layer(x))

    # an in-place edit of the codes after encode is honoured, not served from the cache
    a = layer.encode(x)
    a[:, 3] += 2.0
    expected = (a @ layer.W_experts) * (z @ layer.W_dec) + layer.b_dec
    torch.testing.assert_close(layer.decode(a), expected)

    # steering hook on hook_sae_acts_post changes the forward exactly as the dense math says
    def steer(acts, hook):
        acts = acts.clone()
        acts[..., 7] += 3.0
        return acts

    layer.hook_sae_acts_post.add_hook(steer)
    steered = layer(x)
    layer.reset_hooks()
    a = layer.encode(x).clone()
    a[:, 7] += 3.0
    torch.testing.assert_close(steered, (a @ layer.W_experts) * (z @ layer.W_dec) + layer.b_dec)

    with pytest.raises(ValueError, match="hidden units"):
        layer.decode(torch.zeros(3, N, dtype=DT))


def test_parameter_matching_gives_the_papers_gpt2_number() -> None:
    assert mxd.matched_n_experts(d_in=768, d_out=768, d_hidden=3072, d_sae=24576) == 21490
    n = mxd.matched_n_experts(d_in=I, d_out=O, d_hidden=H, d_sae=32 * I)
    layer = mxd.MxD(mxd.MxDConfig(d_in=I, d_out=O, d_hidden=H, n_experts=n, k=K))
    transcoder = mxd.TopKTranscoder(mxd.TopKTranscoderConfig(d_in=I, d_out=O, d_sae=32 * I, k=K))
    # counted independently: E, b_E, G, b_G, C, D, b_out
    assert mxd.parameter_count(layer) == I * H + H + I * n + n + n * O + H * O + O
    assert mxd.parameter_count(transcoder) == mxd.transcoder_parameter_count(I, 32 * I, O)
    # the paper's accounting leaves the two within one expert's worth of parameters
    gap = abs(mxd.parameter_count(layer) - mxd.parameter_count(transcoder))
    assert gap <= 32 * I + H + I + O + 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": N + 1}, "k=51 must be between 1 and n_experts=50"),
        ({"k": 0}, "k=0 must be between 1"),
        ({"activation": "tanh"}, "activation='tanh' is not supported"),
        ({"d_sae": 49}, "n_experts=50 and d_sae=49 disagree"),
        ({"apply_b_dec_to_input": True}, "apply_b_dec_to_input must be False"),
        ({"loss": "l1"}, "loss='l1' is not supported"),
    ],
)
def test_bad_configs_name_the_problem(kwargs: dict, message: str) -> None:
    base = {"d_in": I, "d_out": O, "d_hidden": H, "n_experts": N, "k": K}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mxd.MxDTrainingSAEConfig(**{**base, **kwargs})


def test_defaults_follow_the_paper() -> None:
    layer = mxd.MxDTrainingSAE(mxd.MxDTrainingSAEConfig(d_in=I, n_experts=N, k=K))
    assert layer.cfg.d_out == I and layer.cfg.d_hidden == 4 * I and layer.cfg.d_sae == N
    assert torch.count_nonzero(layer.W_dec) == 0  # D starts at zero
    torch.testing.assert_close(layer.W_experts.norm(dim=-1), torch.ones(N))
    assert torch.count_nonzero(layer.b_gate) == 0 and torch.count_nonzero(layer.b_enc) == 0
    bound = 1 / math.sqrt(I)
    assert layer.W_gate.abs().max() <= bound and layer.W_enc.abs().max() <= bound
    target_mean = torch.randn(I)
    layer.initialize_output_bias(target_mean)
    torch.testing.assert_close(layer.b_dec.detach(), target_mean)


def test_encode_and_decode_work_in_inference_mode() -> None:
    layer = make_mxd(training=False)
    x = torch.randn(5, I, dtype=DT)
    expected = layer(x)
    with torch.inference_mode():
        torch.testing.assert_close(layer.decode(layer.encode(x)), expected)
