"""Splicing metrics: how much worse the model gets when its MLP is replaced by a layer.

Over a set of equal-length token sequences, with the model's own next-token loss:

- ``ce_clean``, ``ce_spliced``, ``ce_zero_ablation`` (MLP output set to 0),
  ``ce_mean_ablation`` (MLP output set to its mean over the non-special positions of the
  evaluated tokens);
- ``delta_ce = ce_spliced − ce_clean``, ``ce_recovered = (ce_zero − ce_spliced) /
  (ce_zero − ce_clean)`` and ``kl`` = KL(clean ‖ spliced) of the next-token distributions;
- of the layer's output ŷ against the MLP's y: ``nmse = Σ‖ŷ − y‖² / Σ‖y‖²`` and
  ``explained_variance = 1 − Σ‖ŷ − y‖² / Σ‖y − ȳ‖²``;
- of its codes: ``l0`` (mean non-zero codes per position), ``dead_fraction`` (codes never
  non-zero on any evaluated position) and ``dense_fraction`` (non-zero on more than
  ``dense_threshold`` of positions); NaN for a layer without an ``encode``.

Positions: the loss and KL count every predicted token except padding targets (when the pad
token is not also BOS). Activation metrics (NMSE, explained variance, L0, dead and dense
fractions) count every position, unless the layer was trained without special tokens
(``cfg.metadata.exclude_special_tokens`` truthy, as SAELens records it): then that layer's
activation metrics skip the positions holding those tokens (BOS, EOS, padding for ``True``;
the listed ids for a list).

Error bars: tokens of one sequence are correlated, so the sequence is the unit. Every metric
above that is a token average is a ratio Σ_s a_s / Σ_s b_s of per-sequence sums, and its
``*_se`` is the delta-method (cluster) standard error of that ratio,
``sqrt(Σ_s (a_s − R·b_s)² / (n(n−1))) / mean_s(b_s)`` — for ``delta_ce`` and ``kl`` with
equal-length sequences simply ``std(per-sequence means, ddof=1) / sqrt(n)``. ``delta_ce_se``
is the SE of the per-sequence difference spliced − clean, ``ce_recovered_se`` the SE of the
ratio of the per-sequence sums of (zero − spliced) and (zero − clean), ``nmse_se`` that of
Σ‖ŷ − y‖² / Σ‖y‖².

Layers evaluated on the same tokens are compared with paired errors (:func:`compare`): the
clean loss cancels, so ΔCE_A − ΔCE_B has the much smaller SE of the per-sequence difference
spliced_A − spliced_B.

Cost: :func:`evaluate_layers` runs the clean forward once per batch, caching the residual
stream where each spliced block starts; the zero- and mean-ablated forwards run once per
ablated MLP and the spliced forward once per layer, each only from that MLP's block onward.
The layer runs once per batch (its output serves both the splice and the NMSE).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.data.hooks import MLPHooks, layer_of
from mxd_saelens.evaluation.forwards import (
    BatchForwards,
    excluded_token_ids,
    loss_positions,
    mlp_output_means,
    output_and_codes,
    position_mask,
)
from mxd_saelens.evaluation.metrics import SpliceMetrics, ratio, ratio_se, safe_div
from mxd_saelens.evaluation.splice import SplicedLayer, hooks_of

# --- standard errors -----------------------------------------------------------------------


# --- positions -----------------------------------------------------------------------------


# --- forwards ------------------------------------------------------------------------------


# --- accumulation --------------------------------------------------------------------------


class _Stats:
    """Per-sequence statistics written batch by batch into ``[n_sequences]`` float64 buffers,
    and running totals of vectors, all allocated before the first batch and updated in place.

    Anything allocated during the loop and kept (a small tensor per batch, a new total per
    batch) sits between a batch's large freed temporaries, and glibc then cannot reuse or
    return that heap: it grew by about a logits tensor per batch and per layer
    (benchmarks/results/memory.json)."""

    def __init__(self, n_sequences: int, names: Iterable[str], totals: Mapping[str, int]):
        self.per_sequence = {name: np.zeros(n_sequences) for name in names}
        self.totals = {
            name: torch.zeros(size, dtype=torch.float64) for name, size in totals.items()
        }

    def add(self, start: int, **values: Tensor) -> None:  # each [batch], for sequences start…
        for name, value in values.items():
            self.per_sequence[name][start : start + len(value)] = value.double().cpu().numpy()

    def add_total(self, **values: Tensor) -> None:
        for name, value in values.items():
            self.totals[name] += value.double().cpu()

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.per_sequence)


_LAYER_SEQUENCE_STATS = ("ce_spliced", "kl", "sq_error", "target_sq", "n_positions")


def _layer_stats_buffers(item: SplicedLayer, n_sequences: int) -> _Stats:
    """A layer's buffers, their widths read from the layer's output and codes at one zero
    input position (cheap, and no buffer has to be created mid-batch)."""
    first = next(item.layer.parameters(), None)
    x = torch.zeros(
        1,
        1,
        item.hooks.d_in,
        dtype=first.dtype if first is not None else torch.float32,
        device=first.device if first is not None else "cpu",
    )
    y_hat, codes = output_and_codes(item.layer, x)
    names = [*_LAYER_SEQUENCE_STATS, *(["l0"] if codes is not None else [])]
    totals = {"y_sum": y_hat.shape[-1], **({"fired": codes.shape[-1]} if codes is not None else {})}
    return _Stats(n_sequences, names, totals)


def _seq_sum(values: Tensor, mask: Tensor) -> Tensor:
    """``[batch, pos]`` values summed over each sequence's counted positions, in float64."""
    return (values.double() * mask).sum(-1)


def _layer_stats(
    forwards: BatchForwards,
    item: SplicedLayer,
    loss_mask: Tensor,
    positions: Tensor,
    stats: _Stats,
    start: int,
) -> None:
    """One batch (sequences ``start``…) of one layer: the spliced forward and the activation
    statistics."""
    x, y = forwards.cache[item.hooks.hook_in], forwards.cache[item.hooks.hook_out]
    y_hat, codes = output_and_codes(item.layer, x)
    ce, kl = forwards.ce_and_kl(forwards.logits_with(item.hooks.hook_out, y_hat))
    keep = positions.double()  # [batch, pos]
    stats.add(
        start,
        ce_spliced=_seq_sum(ce, loss_mask),
        kl=_seq_sum(kl, loss_mask),
        sq_error=_seq_sum((y_hat.double() - y.double()).pow(2).sum(-1), keep),
        target_sq=_seq_sum(y.double().pow(2).sum(-1), keep),
        n_positions=keep.sum(-1),
    )
    stats.add_total(y_sum=(y.double() * keep[..., None]).sum((0, 1)))
    if codes is not None:
        active = (codes != 0) & positions[..., None]  # [batch, pos, n_codes]
        stats.add(start, l0=active.sum((1, 2)))
        stats.add_total(fired=active.sum((0, 1)))


def _check_tokens(tokens: Tensor) -> None:
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(
            f"tokens must be [n_sequences, context] with context ≥ 2, got {tuple(tokens.shape)}."
        )


@torch.no_grad()
def _evaluate(
    model: HookedRootModule,
    spliced: Mapping[str, SplicedLayer],
    tokens: Tensor,
    batch_size: int,
    dense_threshold: float,
    exclude_special_tokens: bool | Sequence[int] | None = None,
    progress: bool = False,
) -> dict[str, SpliceMetrics]:
    _check_tokens(tokens)
    for item in spliced.values():
        _check_order(item.hooks)
    hook_outs = sorted({item.hooks.hook_out for item in spliced.values()})
    hook_names = set(hook_outs) | {item.hooks.hook_in for item in spliced.values()}
    means = mlp_output_means(model, hook_outs, tokens, batch_size)
    excluded = {
        name: excluded_token_ids(model, item.layer, exclude_special_tokens)
        for name, item in spliced.items()
    }
    n = len(tokens)
    ablations = [f"{kind}:{hook}" for hook in hook_outs for kind in ("zero", "mean")]
    shared = _Stats(n, ["n_tokens", "ce_clean", *ablations], {})
    own = {name: _layer_stats_buffers(item, n) for name, item in spliced.items()}

    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="Splice evaluation", unit="batch", disable=not progress):
        batch = tokens[start : start + batch_size]
        forwards = BatchForwards(model, batch, hook_names)
        loss_mask = loss_positions(model, batch).double()
        _baseline_stats(forwards, hook_outs, means, loss_mask, shared, start)
        for name, item in spliced.items():
            positions = position_mask(batch, excluded[name])
            _layer_stats(forwards, item, loss_mask, positions, own[name], start)
        del forwards  # the batch's cache and clean distributions, before the next is built

    base = shared.arrays()
    return {
        name: _reduce(base, own[name], item.hooks.hook_out, dense_threshold)
        for name, item in spliced.items()
    }


def _baseline_stats(
    forwards: BatchForwards,
    hook_outs: Sequence[str],
    means: Mapping[str, Tensor],
    loss_mask: Tensor,
    shared: _Stats,
    start: int,
) -> None:
    """The batch's clean loss and, per MLP output, its zero- and mean-ablated losses."""
    shared.add(start, n_tokens=loss_mask.sum(-1), ce_clean=_seq_sum(forwards.clean_ce, loss_mask))
    for hook in hook_outs:
        zero = forwards.ce(forwards.logits_with(hook, 0.0))
        mean = forwards.ce(forwards.logits_with(hook, means[hook]))
        shared.add(
            start,
            **{
                f"zero:{hook}": _seq_sum(zero, loss_mask),
                f"mean:{hook}": _seq_sum(mean, loss_mask),
            },
        )


def _check_order(hooks: MLPHooks) -> None:
    # the layer's input is read from the clean forward, so it must come before the output
    block_in, block_out = layer_of(hooks.hook_in), layer_of(hooks.hook_out)
    if block_in is not None and block_out is not None and block_in > block_out:
        raise ValueError(
            f"the input hook {hooks.hook_in!r} comes after the output hook {hooks.hook_out!r}."
        )


def _reduce(
    base: dict[str, np.ndarray], stats: _Stats, hook_out: str, dense_threshold: float
) -> SpliceMetrics:
    """The metrics of one layer from per-sequence sums ([n_sequences] each)."""
    seq = stats.arrays()
    n = base["n_tokens"]
    clean, spliced, kl = base["ce_clean"], seq["ce_spliced"], seq["kl"]
    zero, mean = base[f"zero:{hook_out}"], base[f"mean:{hook_out}"]
    n_positions = seq["n_positions"].sum()
    y_sum = stats.totals["y_sum"]
    total_var = seq["target_sq"].sum() - float(y_sum.pow(2).sum()) / max(n_positions, 1)
    fired = stats.totals.get("fired")
    rate = fired / max(n_positions, 1) if fired is not None else None
    per_sequence = {
        "n_tokens": n,
        **{
            key: values / np.maximum(n, 1)
            for key, values in (
                ("ce_clean", clean),
                ("ce_spliced", spliced),
                ("ce_zero_ablation", zero),
                ("ce_mean_ablation", mean),
                ("kl", kl),
            )
        },
    }
    return SpliceMetrics(
        ce_clean=ratio(clean, n),
        ce_spliced=ratio(spliced, n),
        ce_zero_ablation=ratio(zero, n),
        ce_mean_ablation=ratio(mean, n),
        delta_ce=ratio(spliced - clean, n),
        delta_ce_se=ratio_se(spliced - clean, n),
        ce_recovered=ratio(zero - spliced, zero - clean),
        ce_recovered_se=ratio_se(zero - spliced, zero - clean),
        kl=ratio(kl, n),
        kl_se=ratio_se(kl, n),
        nmse=ratio(seq["sq_error"], seq["target_sq"]),
        nmse_se=ratio_se(seq["sq_error"], seq["target_sq"]),
        explained_variance=1.0 - safe_div(float(seq["sq_error"].sum()), float(total_var)),
        l0=ratio(seq["l0"], n_positions) if "l0" in seq else math.nan,
        dead_fraction=float((rate == 0).double().mean()) if rate is not None else math.nan,
        dense_fraction=float((rate > dense_threshold).double().mean())
        if rate is not None
        else math.nan,
        n_tokens=int(n.sum()),
        n_sequences=len(n),
        per_sequence=per_sequence,
    )


# --- public entry points -------------------------------------------------------------------


@torch.no_grad()
def evaluate_splice(
    model: HookedRootModule,
    spliced: SplicedLayer,
    tokens: Tensor,
    batch_size: int = 8,
    dense_threshold: float = 0.1,
    exclude_special_tokens: bool | Sequence[int] | None = None,
) -> SpliceMetrics:
    """All splicing metrics of one layer over ``tokens`` (``[n_sequences, context]``).

    ``exclude_special_tokens`` overrides the layer's ``cfg.metadata.exclude_special_tokens``
    for the activation metrics (see the module docstring).
    """
    return _evaluate(
        model, {"layer": spliced}, tokens, batch_size, dense_threshold, exclude_special_tokens
    )["layer"]


@dataclass
class Evaluation:
    """What :func:`evaluate_layers` returns.

    ``rows``: one dict per layer, in the order given: ``name``, ``architecture``,
    ``parameters`` and every :class:`SpliceMetrics` scalar (``delta_ce``, ``delta_ce_se``,
    ``kl``, ``kl_se``, ``ce_recovered``, ``ce_recovered_se``, ``nmse``, ``nmse_se``, ``l0``,
    ``dead_fraction``, …). ``metrics``: the full :class:`SpliceMetrics` by name, with the
    per-sequence values that :func:`compare` pairs.
    """

    rows: list[dict[str, Any]]
    metrics: dict[str, SpliceMetrics]

    def compare(self, a: str, b: str) -> dict[str, Any]:
        """Layer ``a`` against layer ``b`` (see :func:`compare`)."""
        return compare(self.metrics[a], self.metrics[b], a, b)

    def comparisons(self, reference: str | None = None) -> list[dict[str, Any]]:
        """Paired comparisons: every pair (first-listed as ``a``) when there are at most four
        layers and no ``reference``; otherwise every other layer against ``reference``
        (default: the first layer)."""
        names = list(self.metrics)
        if reference is None and len(names) <= 4:
            pairs = list(combinations(names, 2))
        else:
            reference = reference or names[0]
            pairs = [(name, reference) for name in names if name != reference]
        return [self.compare(a, b) for a, b in pairs]


@torch.no_grad()
def evaluate_layers(
    model: HookedRootModule,
    layers: Mapping[str, nn.Module | SplicedLayer],
    tokens: Tensor,
    batch_size: int = 8,
    dense_threshold: float = 0.1,
    progress: bool = True,
) -> Evaluation:
    """Every named layer spliced, one at a time, into ``model`` on ``tokens``
    (``[n_sequences, context]``), sharing the clean and ablated forwards of each batch.

    A layer is a saved layer whose ``cfg.metadata`` names its hooks, or a :class:`SplicedLayer`.
    """
    from mxd_saelens.saes.loading import describe

    spliced = {
        name: layer
        if isinstance(layer, SplicedLayer)
        else SplicedLayer(layer, hooks_of(model, layer))
        for name, layer in layers.items()
    }
    metrics = _evaluate(model, spliced, tokens, batch_size, dense_threshold, progress=progress)
    rows = [
        {"name": name, **describe(item.layer), **metrics[name].to_dict()}
        for name, item in spliced.items()
    ]
    return Evaluation(rows=rows, metrics=metrics)


def compare(
    a: SpliceMetrics, b: SpliceMetrics, name_a: str = "a", name_b: str = "b"
) -> dict[str, Any]:
    """Layer A against layer B, evaluated on the same tokens, with paired standard errors.

    For ``m`` in ``delta_ce`` and ``kl``: ``m_a``, ``m_b``; ``m_diff = m_a − m_b`` and its
    ``m_diff_se`` from the per-sequence differences (for ΔCE the clean loss cancels:
    spliced_A − spliced_B); ``m_z = m_diff / m_diff_se``; ``m_ratio = m_a / m_b`` and its
    delta-method ``m_ratio_se``. Also ``a``, ``b`` (the names) and ``n_sequences``.
    """
    pa, pb = a.per_sequence, b.per_sequence
    n = pa["n_tokens"]
    if len(n) != len(pb["n_tokens"]) or not (
        np.array_equal(n, pb["n_tokens"]) and np.allclose(pa["ce_clean"], pb["ce_clean"])
    ):
        raise ValueError(f"{name_a!r} and {name_b!r} were not evaluated on the same tokens.")
    out: dict[str, Any] = {"a": name_a, "b": name_b, "n_sequences": len(n)}
    for metric, key, baseline in (("delta_ce", "ce_spliced", pa["ce_clean"]), ("kl", "kl", 0.0)):
        # per-sequence sums of the metric for each layer
        sa, sb = (pa[key] - baseline) * n, (pb[key] - baseline) * n
        diff, diff_se = ratio(sa - sb, n), ratio_se(sa - sb, n)
        out |= {
            f"{metric}_a": ratio(sa, n),
            f"{metric}_b": ratio(sb, n),
            f"{metric}_diff": diff,
            f"{metric}_diff_se": diff_se,
            f"{metric}_z": safe_div(diff, diff_se),
            f"{metric}_ratio": ratio(sa, sb),
            f"{metric}_ratio_se": ratio_se(sa, sb),
        }
    return out
