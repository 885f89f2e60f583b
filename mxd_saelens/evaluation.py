"""Splicing metrics: how much worse the model gets when its MLP is replaced by a layer.

Over a set of token sequences, with the model's own next-token loss:

- ``ce_clean``, ``ce_spliced``, ``ce_zero_ablation`` (MLP output set to 0),
  ``ce_mean_ablation`` (MLP output set to its mean over the evaluated tokens);
- ``delta_ce = ce_spliced − ce_clean`` and ``ce_recovered = (ce_zero − ce_spliced) /
  (ce_zero − ce_clean)``; ``kl`` = KL(clean ‖ spliced) of the next-token distributions;
- of the layer's output against the MLP's: ``nmse = Σ‖ŷ − y‖² / Σ‖y‖²`` and
  ``explained_variance = 1 − Σ‖ŷ − y‖² / Σ‖y − ȳ‖²``;
- of its codes: ``l0`` (mean non-zero codes per token), ``dead_fraction`` (never non-zero) and
  ``dense_fraction`` (non-zero on more than ``dense_threshold`` of tokens).

Positions: the loss and KL count every predicted token except padding targets; activation
metrics skip positions holding a special token (BOS, padding), whose activations are outliers
the layer is not asked to model — the same tokens SAELens's ``exclude_special_tokens`` drops.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookedRootModule, HookPoint

from mxd_saelens.hooks import MLPHooks
from mxd_saelens.splice import SplicedLayer, run_layer, splice


@dataclass
class SpliceMetrics:
    ce_clean: float
    ce_spliced: float
    ce_zero_ablation: float
    ce_mean_ablation: float
    delta_ce: float
    ce_recovered: float
    kl: float
    nmse: float
    explained_variance: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    n_tokens: int
    per_token: dict[str, Tensor] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, float | int]:
        out = asdict(self)
        out.pop("per_token")
        return out


def special_token_ids(model: HookedRootModule) -> list[int]:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return []
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sorted(i for i in ids if i is not None)


def layer_codes(layer: nn.Module, mlp_in: Tensor) -> Tensor | None:
    """The layer's sparse codes (dense tensor), if it has an ``encode``."""
    encode = getattr(layer, "encode", None)
    return encode(mlp_in) if encode is not None else None


def _next_token_logprobs(logits: Tensor) -> Tensor:
    return F.log_softmax(logits[:, :-1].float(), dim=-1)


def _ablate_with(value: Tensor | float):
    def hook(acts: Tensor, hook: HookPoint) -> Tensor:
        return torch.zeros_like(acts) + value

    return hook


@torch.no_grad()
def mlp_output_mean(
    model: HookedRootModule, hooks: MLPHooks, tokens: Tensor, batch_size: int, ignore: Tensor
) -> Tensor:
    """Mean MLP output over the non-special positions of ``tokens``."""
    total, count = None, 0
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size]
        _, cache = model.run_with_cache(
            batch, names_filter=[hooks.hook_out], stop_at_layer=hooks.layer + 1
        )
        keep = ~torch.isin(batch, ignore)
        y = cache[hooks.hook_out][keep].double()
        total = y.sum(0) if total is None else total + y.sum(0)
        count += y.shape[0]
    assert total is not None
    return (total / max(count, 1)).float()


@torch.no_grad()
def evaluate_splice(
    model: HookedRootModule,
    spliced: SplicedLayer,
    tokens: Tensor,
    batch_size: int = 8,
    dense_threshold: float = 0.1,
    per_token: bool = False,
    ignore_token_ids: list[int] | None = None,
) -> SpliceMetrics:
    """All splicing metrics of one layer over ``tokens`` ([n_sequences, context])."""
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(
            f"tokens must be [n_sequences, context] with context ≥ 2, got {tuple(tokens.shape)}."
        )
    hooks = spliced.hooks
    device = tokens.device
    ignore = torch.tensor(
        special_token_ids(model) if ignore_token_ids is None else ignore_token_ids,
        dtype=torch.long,
        device=device,
    )
    pad_id = getattr(getattr(model, "tokenizer", None), "pad_token_id", None)
    bos_id = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    mean_out = mlp_output_mean(model, hooks, tokens, batch_size, ignore)

    sums: dict[str, float] = dict.fromkeys(("clean", "spliced", "zero", "mean", "kl"), 0.0)
    n_ce = 0
    err = tgt = 0.0
    y_sum: Tensor | None = None
    y_sq = 0.0
    n_act = 0
    l0_sum = 0.0
    fired: Tensor | None = None
    per: dict[str, list[Tensor]] = {"ce_clean": [], "ce_spliced": [], "kl": [], "sq_error": []}

    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size]
        targets = batch[:, 1:]
        # a pad target is not a prediction; a BOS target only appears when sequences are packed
        ce_mask = torch.ones_like(targets, dtype=torch.bool)
        if pad_id is not None and pad_id != bos_id:
            ce_mask &= targets != pad_id

        logits, cache = model.run_with_cache(batch, names_filter=[hooks.hook_in, hooks.hook_out])
        logp_clean = _next_token_logprobs(logits)
        with splice(model, spliced):
            logp_spliced = _next_token_logprobs(model(batch))
        logp_zero = _next_token_logprobs(
            model.run_with_hooks(batch, fwd_hooks=[(hooks.hook_out, _ablate_with(0.0))])
        )
        logp_mean = _next_token_logprobs(
            model.run_with_hooks(batch, fwd_hooks=[(hooks.hook_out, _ablate_with(mean_out))])
        )

        def ce(logp: Tensor, targets: Tensor = targets) -> Tensor:
            return -logp.gather(-1, targets[..., None])[..., 0]

        ce_clean, ce_spliced = ce(logp_clean), ce(logp_spliced)
        kl = (logp_clean.exp() * (logp_clean - logp_spliced)).sum(-1)
        for name, values in (
            ("clean", ce_clean),
            ("spliced", ce_spliced),
            ("zero", ce(logp_zero)),
            ("mean", ce(logp_mean)),
            ("kl", kl),
        ):
            sums[name] += values[ce_mask].double().sum().item()
        n_ce += int(ce_mask.sum())

        x, y = cache[hooks.hook_in], cache[hooks.hook_out]
        y_hat = run_layer(spliced.layer, x)
        keep = ~torch.isin(batch, ignore)
        sq = (y_hat - y).double().pow(2).sum(-1)
        err += sq[keep].sum().item()
        tgt += y.double().pow(2).sum(-1)[keep].sum().item()
        y_kept = y[keep].double()
        y_sum = y_kept.sum(0) if y_sum is None else y_sum + y_kept.sum(0)
        y_sq += y_kept.pow(2).sum().item()
        n_act += int(keep.sum())

        codes = layer_codes(spliced.layer, x)
        if codes is not None:
            active = (codes != 0)[keep]
            l0_sum += active.sum().item()
            counts = active.sum(0).double()
            fired = counts if fired is None else fired + counts
        if per_token:
            per["ce_clean"].append(ce_clean)
            per["ce_spliced"].append(ce_spliced)
            per["kl"].append(kl)
            per["sq_error"].append(sq)

    assert y_sum is not None
    total_var = y_sq - (y_sum.pow(2).sum().item() / max(n_act, 1))
    ce_clean_mean = sums["clean"] / n_ce
    ce_spliced_mean = sums["spliced"] / n_ce
    ce_zero_mean = sums["zero"] / n_ce
    denominator = ce_zero_mean - ce_clean_mean
    firing_rate = fired / max(n_act, 1) if fired is not None else None
    return SpliceMetrics(
        ce_clean=ce_clean_mean,
        ce_spliced=ce_spliced_mean,
        ce_zero_ablation=ce_zero_mean,
        ce_mean_ablation=sums["mean"] / n_ce,
        delta_ce=ce_spliced_mean - ce_clean_mean,
        ce_recovered=(ce_zero_mean - ce_spliced_mean) / denominator
        if denominator
        else float("nan"),
        kl=sums["kl"] / n_ce,
        nmse=err / max(tgt, 1e-12),
        explained_variance=1.0 - err / max(total_var, 1e-12),
        l0=l0_sum / max(n_act, 1),
        dead_fraction=float((firing_rate == 0).double().mean())
        if firing_rate is not None
        else float("nan"),
        dense_fraction=float((firing_rate > dense_threshold).double().mean())
        if firing_rate is not None
        else float("nan"),
        n_tokens=n_ce,
        per_token={name: torch.cat(values) for name, values in per.items()} if per_token else None,
    )


def flatten_metrics(metrics: SpliceMetrics, prefix: str = "eval/") -> dict[str, Any]:
    return {f"{prefix}{name}": value for name, value in metrics.to_dict().items()}


def evaluate_layers(
    model: HookedRootModule,
    layers: dict[str, nn.Module],
    tokens: Tensor,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """One row of metrics per named layer, each spliced into ``model`` on ``tokens``."""
    from mxd_saelens.layers import describe
    from mxd_saelens.splice import hooks_of

    rows = []
    for name, layer in tqdm(layers.items(), desc="Splice evaluation", unit="layer"):
        metrics = evaluate_splice(
            model, SplicedLayer(layer, hooks_of(model, layer)), tokens, batch_size=batch_size
        )
        rows.append({"name": name, **describe(layer), **metrics.to_dict()})
    return rows
