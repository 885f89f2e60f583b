"""The forwards a splice evaluation shares between layers: the clean forward of a batch, with
its hooks and residual streams recorded, the MLP-ablated baselines, and the positions that count."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from sae_lens.util import get_special_token_ids
from torch import Tensor, nn
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookedRootModule, HookPoint
from transformer_lens.utils import lm_cross_entropy_loss

from mxd_saelens.data.hooks import layer_of, resid_pre_hook
from mxd_saelens.data.tokens import special_token_ids
from mxd_saelens.evaluation.splice import run_layer
from mxd_saelens.saes.common import forget_encoding


def excluded_token_ids(
    model: HookedRootModule, layer: nn.Module, exclude: bool | Sequence[int] | None = None
) -> list[int]:
    """Token ids whose positions the layer's activation metrics skip: ``exclude``, or else the
    layer's ``cfg.metadata.exclude_special_tokens`` (``True``: the tokenizer's special tokens,
    as SAELens resolves it; a list: those ids; falsy or absent: none)."""
    if exclude is None:
        exclude = getattr(layer_metadata(layer), "exclude_special_tokens", None)
    if exclude is True:
        tokenizer = getattr(model, "tokenizer", None)
        return sorted(get_special_token_ids(tokenizer)) if tokenizer is not None else []
    return sorted(int(i) for i in exclude) if exclude else []


def layer_metadata(layer: nn.Module) -> Any:
    # wrappers that rescale a layer (``.layer``) carry no config of their own
    while getattr(layer, "cfg", None) is None and isinstance(
        getattr(layer, "layer", None), nn.Module
    ):
        layer = layer.layer  # type: ignore[assignment]
    return getattr(getattr(layer, "cfg", None), "metadata", None)


def loss_positions(model: HookedRootModule, tokens: Tensor) -> Tensor:
    """``[batch, pos − 1]``: which next-token targets count. A pad target is not a prediction;
    when pad is also BOS it marks a document start in packed sequences and counts."""
    tokenizer = getattr(model, "tokenizer", None)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    targets = tokens[:, 1:]
    if pad_id is None or pad_id == getattr(tokenizer, "bos_token_id", None):
        return torch.ones_like(targets, dtype=torch.bool)
    return targets != pad_id


def position_mask(tokens: Tensor, excluded: list[int]) -> Tensor:
    """``[batch, pos]``: the positions activation metrics count."""
    if not excluded:
        return torch.ones_like(tokens, dtype=torch.bool)
    return ~torch.isin(tokens, torch.tensor(excluded, dtype=tokens.dtype, device=tokens.device))


def replace_with(value: Tensor | float):
    def hook(acts: Tensor, hook: HookPoint) -> Tensor:
        return torch.zeros_like(acts) + value

    return hook


def start_block(model: HookedRootModule, hook_name: str) -> int | None:
    """The block a forward replacing ``hook_name`` must start at (None: the full forward)."""
    return layer_of(hook_name) if isinstance(model, HookedTransformer) else None


@torch.no_grad()
def mlp_output_means(
    model: HookedRootModule, hook_outs: Iterable[str], tokens: Tensor, batch_size: int
) -> dict[str, Tensor]:
    """Mean of each output hook (``[d_out]``) over the non-special positions of ``tokens``;
    BOS outputs are outliers that would pull the mean-ablation value away from typical ones."""
    hook_outs = list(hook_outs)
    blocks = [layer_of(h) for h in hook_outs]
    stop = None if None in blocks else max(b for b in blocks if b is not None) + 1
    ignore = torch.tensor(special_token_ids(model), dtype=tokens.dtype, device=tokens.device)
    totals: dict[str, Tensor] = {}
    count = 0
    for batch in tokens.split(batch_size):
        _, cache = model.run_with_cache(batch, names_filter=hook_outs, stop_at_layer=stop)
        keep = ~torch.isin(batch, ignore)
        for name in hook_outs:
            total = cache[name][keep].double().sum(0)
            if name in totals:
                totals[name] += total  # in place: nothing new is kept per batch
            else:
                totals[name] = total
        count += int(keep.sum())
    return {name: (total / max(count, 1)).float() for name, total in totals.items()}


class BatchForwards:
    """The clean forward of one batch ``[batch, pos]``, and forwards that replace one hook's
    activations, run only from that hook's block onward on the cached clean residual stream.

    ``cache`` holds the clean activations of ``hook_names``.
    """

    def __init__(self, model: HookedRootModule, tokens: Tensor, hook_names: Iterable[str]):
        hook_names = set(hook_names)
        starts = {start_block(model, h) for h in hook_names} - {None}
        resid = {resid_pre_hook(b) for b in starts}
        self.model, self.tokens = model, tokens
        logits, self.cache = model.run_with_cache(tokens, names_filter=sorted(hook_names | resid))
        self.clean_log_probs = next_token_logits(logits).log_softmax(-1)  # [batch, pos − 1, vocab]
        self.clean_probs = self.clean_log_probs.exp()
        self.clean_ce = self.ce(logits)  # [batch, pos − 1]
        self._tail_kwargs: dict[str, Any] = {}
        if starts:
            # the embedding step also yields what the blocks need besides the residual stream
            _, _, pos_embed, attention_mask = model.input_to_embed(tokens)  # type: ignore[operator]
            self._tail_kwargs = {
                "shortformer_pos_embed": pos_embed,
                "attention_mask": attention_mask,
            }

    def logits_with(self, hook_name: str, value: Tensor | float) -> Tensor:
        """Logits ``[batch, pos, vocab]`` with ``hook_name``'s activations set to ``value``."""
        hooks = [(hook_name, replace_with(value))]
        block = start_block(self.model, hook_name)
        if block is None:
            return self.model.run_with_hooks(self.tokens, fwd_hooks=hooks)
        resid = self.cache[resid_pre_hook(block)]
        return self.model.run_with_hooks(
            resid, start_at_layer=block, fwd_hooks=hooks, **self._tail_kwargs
        )

    def ce(self, logits: Tensor) -> Tensor:
        """Next-token cross-entropy ``[batch, pos − 1]`` (logits ``[batch, pos, vocab]``), by
        TransformerLens's own per-token loss."""
        return lm_cross_entropy_loss(logits.float(), self.tokens, per_token=True)

    def ce_and_kl(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy and KL(clean ‖ these logits), each ``[batch, pos − 1]``."""
        log_probs = next_token_logits(logits).log_softmax(-1)
        kl = (self.clean_probs * (self.clean_log_probs - log_probs)).sum(-1)
        return self.ce(logits), kl


def next_token_logits(logits: Tensor) -> Tensor:
    return logits[:, :-1].float()


def output_and_codes(layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """The layer's output (in ``x``'s dtype) and its dense codes (None without ``encode``),
    from one run where the layer offers ``forward_with_activations``."""
    both = getattr(layer, "forward_with_activations", None)
    if both is not None:
        out, codes = both(x)
        out = out.to(x.dtype)
    else:
        encode = getattr(layer, "encode", None)
        out, codes = run_layer(layer, x), (encode(x) if encode is not None else None)
    forget_encoding(layer)  # else every evaluated layer keeps its last batch's codes
    return out, codes
