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
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import torch
from sae_lens.util import get_special_token_ids
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookedRootModule, HookPoint
from transformer_lens.utils import lm_cross_entropy_loss

from mxd_saelens.data.hooks import MLPHooks, layer_of
from mxd_saelens.data.tokens import special_token_ids
from mxd_saelens.evaluation.splice import SplicedLayer, hooks_of, run_layer
from mxd_saelens.saes.common import forget_encoding


@dataclass
class SpliceMetrics:
    """The metrics of one spliced layer (see the module docstring).

    ``per_sequence`` holds ``[n_sequences]`` arrays for paired comparisons: ``n_tokens`` (the
    predicted tokens counted in each sequence) and the per-sequence means over them of
    ``ce_clean``, ``ce_spliced``, ``ce_zero_ablation``, ``ce_mean_ablation`` and ``kl``.
    """

    ce_clean: float
    ce_spliced: float
    ce_zero_ablation: float
    ce_mean_ablation: float
    delta_ce: float
    delta_ce_se: float
    ce_recovered: float
    ce_recovered_se: float
    kl: float
    kl_se: float
    nmse: float
    nmse_se: float
    explained_variance: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    n_tokens: int
    n_sequences: int
    per_sequence: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, float | int]:
        """The scalar metrics (``per_sequence`` left out)."""
        out = asdict(self)
        out.pop("per_sequence")
        return out


def flatten_metrics(metrics: SpliceMetrics, prefix: str = "eval/") -> dict[str, Any]:
    return {f"{prefix}{name}": value for name, value in metrics.to_dict().items()}


# --- standard errors -----------------------------------------------------------------------


def ratio_se(num: np.ndarray, den: np.ndarray) -> float:
    """Delta-method standard error of ``Σ num / Σ den`` over independent clusters (sequences),
    from per-cluster sums ``num`` and ``den`` ([n]). NaN with fewer than two clusters."""
    n = len(num)
    if n < 2 or den.sum() == 0:
        return math.nan
    ratio = num.sum() / den.sum()
    residual = (num - ratio * den) / den.mean()
    return float(np.sqrt((residual**2).sum() / (n * (n - 1))))


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> float:
    num, den = float(np.sum(num)), float(np.sum(den))
    return num / den if den else math.nan


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


# --- positions -----------------------------------------------------------------------------


def excluded_token_ids(
    model: HookedRootModule, layer: nn.Module, exclude: bool | Sequence[int] | None = None
) -> list[int]:
    """Token ids whose positions the layer's activation metrics skip: ``exclude``, or else the
    layer's ``cfg.metadata.exclude_special_tokens`` (``True``: the tokenizer's special tokens,
    as SAELens resolves it; a list: those ids; falsy or absent: none)."""
    if exclude is None:
        exclude = getattr(_metadata(layer), "exclude_special_tokens", None)
    if exclude is True:
        tokenizer = getattr(model, "tokenizer", None)
        return sorted(get_special_token_ids(tokenizer)) if tokenizer is not None else []
    return sorted(int(i) for i in exclude) if exclude else []


def _metadata(layer: nn.Module) -> Any:
    # wrappers that rescale a layer (``.layer``) carry no config of their own
    while getattr(layer, "cfg", None) is None and isinstance(
        getattr(layer, "layer", None), nn.Module
    ):
        layer = layer.layer  # type: ignore[assignment]
    return getattr(getattr(layer, "cfg", None), "metadata", None)


def _loss_mask(model: HookedRootModule, tokens: Tensor) -> Tensor:
    """``[batch, pos − 1]``: which next-token targets count. A pad target is not a prediction;
    when pad is also BOS it marks a document start in packed sequences and counts."""
    tokenizer = getattr(model, "tokenizer", None)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    targets = tokens[:, 1:]
    if pad_id is None or pad_id == getattr(tokenizer, "bos_token_id", None):
        return torch.ones_like(targets, dtype=torch.bool)
    return targets != pad_id


def _position_mask(tokens: Tensor, excluded: list[int]) -> Tensor:
    """``[batch, pos]``: the positions activation metrics count."""
    if not excluded:
        return torch.ones_like(tokens, dtype=torch.bool)
    return ~torch.isin(tokens, torch.tensor(excluded, dtype=tokens.dtype, device=tokens.device))


# --- forwards ------------------------------------------------------------------------------


def _replace_with(value: Tensor | float):
    def hook(acts: Tensor, hook: HookPoint) -> Tensor:
        return torch.zeros_like(acts) + value

    return hook


def _start_block(model: HookedRootModule, hook_name: str) -> int | None:
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
        starts = {_start_block(model, h) for h in hook_names} - {None}
        resid = {f"blocks.{b}.hook_resid_pre" for b in starts}
        self.model, self.tokens = model, tokens
        logits, self.cache = model.run_with_cache(tokens, names_filter=sorted(hook_names | resid))
        self.clean_log_probs = _next_token_logits(logits).log_softmax(-1)  # [batch, pos − 1, vocab]
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
        hooks = [(hook_name, _replace_with(value))]
        block = _start_block(self.model, hook_name)
        if block is None:
            return self.model.run_with_hooks(self.tokens, fwd_hooks=hooks)
        resid = self.cache[f"blocks.{block}.hook_resid_pre"]
        return self.model.run_with_hooks(
            resid, start_at_layer=block, fwd_hooks=hooks, **self._tail_kwargs
        )

    def ce(self, logits: Tensor) -> Tensor:
        """Next-token cross-entropy ``[batch, pos − 1]`` (logits ``[batch, pos, vocab]``), by
        TransformerLens's own per-token loss."""
        return lm_cross_entropy_loss(logits.float(), self.tokens, per_token=True)

    def ce_and_kl(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy and KL(clean ‖ these logits), each ``[batch, pos − 1]``."""
        log_probs = _next_token_logits(logits).log_softmax(-1)
        kl = (self.clean_probs * (self.clean_log_probs - log_probs)).sum(-1)
        return self.ce(logits), kl


def _next_token_logits(logits: Tensor) -> Tensor:
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
        loss_mask = _loss_mask(model, batch).double()
        shared.add(
            start, n_tokens=loss_mask.sum(-1), ce_clean=_seq_sum(forwards.clean_ce, loss_mask)
        )
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
        for name, item in spliced.items():
            positions = _position_mask(batch, excluded[name])
            _layer_stats(forwards, item, loss_mask, positions, own[name], start)
        del forwards  # the batch's cache and clean distributions, before the next is built

    base = shared.arrays()
    return {
        name: _reduce(base, own[name], item.hooks.hook_out, dense_threshold)
        for name, item in spliced.items()
    }


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
        ce_clean=_ratio(clean, n),
        ce_spliced=_ratio(spliced, n),
        ce_zero_ablation=_ratio(zero, n),
        ce_mean_ablation=_ratio(mean, n),
        delta_ce=_ratio(spliced - clean, n),
        delta_ce_se=ratio_se(spliced - clean, n),
        ce_recovered=_ratio(zero - spliced, zero - clean),
        ce_recovered_se=ratio_se(zero - spliced, zero - clean),
        kl=_ratio(kl, n),
        kl_se=ratio_se(kl, n),
        nmse=_ratio(seq["sq_error"], seq["target_sq"]),
        nmse_se=ratio_se(seq["sq_error"], seq["target_sq"]),
        explained_variance=1.0 - _div(float(seq["sq_error"].sum()), float(total_var)),
        l0=_ratio(seq["l0"], n_positions) if "l0" in seq else math.nan,
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
        diff, diff_se = _ratio(sa - sb, n), ratio_se(sa - sb, n)
        out |= {
            f"{metric}_a": _ratio(sa, n),
            f"{metric}_b": _ratio(sb, n),
            f"{metric}_diff": diff,
            f"{metric}_diff_se": diff_se,
            f"{metric}_z": _div(diff, diff_se),
            f"{metric}_ratio": _ratio(sa, sb),
            f"{metric}_ratio_se": ratio_se(sa, sb),
        }
    return out
