"""Where an MLP's input and output live in a TransformerLens model.

``mlp_in`` is what the MLP's weights see: ``blocks.L.ln2.hook_normalized`` for LayerNorm and
RMSNorm models (``blocks.L.hook_resid_mid`` when the block has no normalisation); ``mlp_out``
is ``blocks.L.hook_mlp_out``. Explicit hook names override both.

``hook_normalized`` is taken before the norm's weight and bias, so it is the MLP's input only in
a model whose norms are folded (``HookedTransformer.from_pretrained``'s default, and how
``zoo.load`` returns the bundled models); :func:`check_mlp_pair` verifies a pair on real data.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens.hook_points import HookedRootModule

_LAYER_PATTERN = re.compile(r"^blocks\.(\d+)\.")

# the MxD's hidden activation for each TransformerLens act_fn
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


@dataclass(frozen=True)
class MLPHooks:
    """The two hook points of block ``layer``'s MLP and their widths."""

    layer: int
    hook_in: str
    hook_out: str
    d_in: int
    d_out: int


def layer_of(hook_name: str) -> int | None:
    """The block index in a ``blocks.L.…`` hook name."""
    match = _LAYER_PATTERN.match(hook_name)
    return int(match.group(1)) if match else None


# The hook names this package reads, spelled here only.
def mlp_in_hook(layer: int, normalized: bool = True) -> str:
    """Block L's MLP input: after its norm, or the residual stream for a block without one."""
    return f"blocks.{layer}.ln2.hook_normalized" if normalized else f"blocks.{layer}.hook_resid_mid"


def mlp_out_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def mlp_post_hook(layer: int) -> str:
    """Block L's MLP hidden units after the activation (its neurons)."""
    return f"blocks.{layer}.mlp.hook_post"


def resid_pre_hook(block: int) -> str:
    return f"blocks.{block}.hook_resid_pre"


def default_mlp_in(model: HookedRootModule, layer: int) -> str:
    normalized = mlp_in_hook(layer)
    return normalized if normalized in model.hook_dict else mlp_in_hook(layer, normalized=False)


def _check_hook(model: HookedRootModule, hook_name: str, role: str) -> None:
    if hook_name in model.hook_dict:
        return
    close = difflib.get_close_matches(hook_name, list(model.hook_dict), n=5, cutoff=0.6)
    layer = layer_of(hook_name)
    same_block = [
        n for n in model.hook_dict if layer is not None and n.startswith(f"blocks.{layer}.")
    ]
    suggestions = close or same_block[:12] or list(model.hook_dict)[:12]
    raise ValueError(
        f"{role} hook {hook_name!r} is not a hook point of this model. "
        f"Did you mean one of: {', '.join(suggestions)}? "
        "(model.hook_dict lists every valid name.)"
    )


def _check_layer(model: HookedRootModule, layer: int) -> None:
    n_layers = getattr(model.cfg, "n_layers", None)  # type: ignore[attr-defined]
    if n_layers is not None and not 0 <= layer < n_layers:
        raise ValueError(
            f"layer {layer} is out of range: this model has {n_layers} blocks, numbered "
            f"0 to {n_layers - 1}."
        )


def _check_same_block(hook_in: str, hook_out: str) -> None:
    """A paired layer stands in for one block's MLP: both hooks must be in that block (the
    store stops the forward after it, and a splice replaces that block's output)."""
    block_in, block_out = layer_of(hook_in), layer_of(hook_out)
    if block_in is not None and block_out is not None and block_in != block_out:
        raise ValueError(
            f"the input hook {hook_in!r} is in block {block_in} but the output hook "
            f"{hook_out!r} is in block {block_out}: a layer replaces one block's MLP, so both "
            f"hooks must be in the same block (for block {block_in}: "
            f"'blocks.{block_in}.ln2.hook_normalized' → 'blocks.{block_in}.hook_mlp_out')."
        )


def hook_width(model: HookedRootModule, hook_name: str) -> int:
    """The feature width of a residual-stream-shaped or MLP-hidden hook, without running the
    model."""
    cfg: Any = model.cfg  # type: ignore[attr-defined]
    if hook_name.endswith(("mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear")):
        return int(cfg.d_mlp)
    if hook_name.endswith(("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v")):
        return int(cfg.n_heads * cfg.d_head)
    return int(cfg.d_model)


def resolve_mlp_hooks(
    model: HookedRootModule,
    layer: int | None = None,
    hook_in: str | None = None,
    hook_out: str | None = None,
) -> MLPHooks:
    """Resolve (and check) the MLP hooks of ``layer``; explicit names win.

    Fails before the model runs, naming the valid choices, when a layer is out of range or a
    hook name is not one of the model's hook points.
    """
    if layer is None:
        named = hook_in or hook_out
        layer = layer_of(named) if named else None
        if layer is None:
            raise ValueError(
                "give the MLP's layer, or hook names of the form 'blocks.L.…' to read it from."
            )
    _check_layer(model, layer)
    hook_in = hook_in or default_mlp_in(model, layer)
    hook_out = hook_out or mlp_out_hook(layer)
    _check_hook(model, hook_in, "input")
    _check_hook(model, hook_out, "output")
    _check_same_block(hook_in, hook_out)
    return MLPHooks(
        layer=layer,
        hook_in=hook_in,
        hook_out=hook_out,
        d_in=hook_width(model, hook_in),
        d_out=hook_width(model, hook_out),
    )


def mlp_shape(model: HookedRootModule) -> dict[str, Any]:
    """The MxD fields that mirror the model's MLP: hidden width, activation and gating."""
    return mlp_shape_of(model.cfg)


def mlp_shape_of(cfg: Any) -> dict[str, Any]:
    """:func:`mlp_shape` from a ``HookedTransformerConfig`` alone (no weights needed)."""
    act_fn = str(cfg.act_fn)
    if act_fn not in _ACTIVATIONS:
        raise ValueError(
            f"the model's MLP activation {act_fn!r} has no MxD counterpart; pass activation= "
            f"one of {sorted(set(_ACTIVATIONS.values()))} explicitly."
        )
    return {
        "d_hidden": int(cfg.d_mlp),
        "activation": _ACTIVATIONS[act_fn],
        "glu": bool(getattr(cfg, "gated_mlp", False)),
    }


class MLPHookMismatch(ValueError):
    """The hook pair does not hold the MLP's input and output."""


@torch.no_grad()
def check_mlp_pair(
    model: HookedRootModule, hooks: MLPHooks, x: Tensor, y: Tensor, rtol: float = 1e-3
) -> float:
    """Check that block L's own MLP maps the captured input ``x`` to the captured output ``y``
    (``[..., d_in]`` and ``[..., d_out]``); return the relative error ‖mlp(x) − y‖ / ‖y‖.

    Raises :class:`MLPHookMismatch`, naming both hooks and the fix, when it does not: the layer
    would learn a map that is not the MLP's, and splicing it would not replace the MLP.
    """
    opt_out = (
        "If you mean to train on this pair anyway, pass check_mlp_hooks=False "
        "(PairedTrainingRunner / runner_config; --check_mlp_hooks False on the command line)."
    )
    expected_out = mlp_out_hook(hooks.layer)
    blocks = getattr(model, "blocks", None)
    if hooks.hook_out != expected_out or blocks is None or not hasattr(blocks[hooks.layer], "mlp"):
        raise MLPHookMismatch(
            f"cannot check that {hooks.hook_in!r} → {hooks.hook_out!r} is block {hooks.layer}'s "
            f"MLP: the output hook is not {expected_out!r}. {opt_out}"
        )
    mlp = blocks[hooks.layer].mlp
    y_mlp = mlp(x.to(next(mlp.parameters()).dtype))
    error = float((y_mlp.double() - y.double()).norm() / y.double().norm().clamp_min(1e-30))
    if not error <= rtol:  # also catches NaN
        raise MLPHookMismatch(
            f"block {hooks.layer}'s MLP applied to {hooks.hook_in!r} does not reproduce "
            f"{hooks.hook_out!r} (relative error {error:.2e} > {rtol:.0e}): the input hook is "
            "not what the MLP's weights see. A norm's hook_normalized is taken before the "
            "norm's weight and bias, so it is the MLP's input only when those are folded in: "
            "load the model with fold_ln=True (HookedTransformer.from_pretrained's default; "
            "model_from_pretrained_kwargs={'fold_ln': True}) or call "
            "model.process_weights_(fold_ln=True) before training. " + opt_out
        )
    return error


@torch.no_grad()
def check_hook_pairs(
    model: HookedRootModule, pairs: Sequence[MLPHooks], tokens: Tensor, autocast: bool = False
) -> None:
    """Run the model on ``tokens`` and check every pair against its block's own MLP."""
    names = list(dict.fromkeys(n for p in pairs for n in (p.hook_in, p.hook_out)))
    _, cache = model.run_with_cache(
        tokens, names_filter=names, stop_at_layer=max(p.layer for p in pairs) + 1
    )
    for pair in pairs:
        check_mlp_pair(
            model, pair, cache[pair.hook_in], cache[pair.hook_out], rtol=5e-2 if autocast else 1e-3
        )
