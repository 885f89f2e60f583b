"""Looking inside a trained layer: expert weights and ranks, the tokens a code promotes and
suppresses, its top-activating contexts, and how often each code fires. Each view is a function
that returns data and a function that returns a plotly ``go.Figure`` of it.

Output direction of a code: what one unit of it adds to the MLP output.

- transcoder latent n: ``W_dec[n]``, the same in every context;
- MxD expert n: ``W_nᵀz = c_n ⊙ (Dᵀz)`` depends on the hidden units z. Its mean over a set of
  tokens is ``c_n ⊙ (Dᵀz̄)`` exactly (it is linear in z), so the direction is read at the mean
  hidden units z̄ of a reference token set (:func:`mean_hidden`).

Read through the unembedding (:func:`logit_direction`), a direction gives the tokens it promotes
and suppresses, the logit-lens view of the code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.data.tokens import keep_mask, special_token_ids
from mxd_saelens.reading.directions import is_mxd, output_directions
from mxd_saelens.reading.probing import CodeSource, LayerCodes, hook_activations
from mxd_saelens.saes.mxd import MxDModule


def n_codes(layer: nn.Module) -> int:
    return int(layer.cfg.d_sae)  # type: ignore[union-attr]


def check_code(layer: nn.Module | CodeSource, code: int) -> int:
    """``code`` if the layer has it, else an IndexError that says the valid range."""
    count = layer.n_codes if hasattr(layer, "n_codes") else n_codes(layer)  # type: ignore[union-attr,arg-type]
    if not 0 <= code < count:
        kind = "expert" if isinstance(layer, nn.Module) and is_mxd(layer) else "code"
        raise IndexError(f"{kind} {code} is out of range: valid indices are 0 to {count - 1}.")
    return code


def _as_source(layer: nn.Module | CodeSource) -> CodeSource:
    return LayerCodes(layer) if isinstance(layer, nn.Module) else layer


# --- expert weights and rank -------------------------------------------------------------------


def _require_mxd(layer: nn.Module) -> MxDModule:
    if not is_mxd(layer):
        raise TypeError(
            f"{type(layer).__name__} is not an MxD: only an MxD's experts have weight matrices."
        )
    return layer  # type: ignore[return-value]


@torch.no_grad()
def expert_matrix(layer: nn.Module, expert: int) -> Tensor:
    """Expert n's ``[H, O]`` matrix ``W_n = D·diag(c_n)``."""
    return _require_mxd(layer).expert_weights(check_code(layer, expert)).detach().clone()


@torch.no_grad()
def expert_ranks(layer: nn.Module, experts: Sequence[int]) -> list[int]:
    """The numerical rank of each expert's matrix (full rank is ``min(H, O)``)."""
    return [int(torch.linalg.matrix_rank(expert_matrix(layer, n).double())) for n in experts]


@torch.no_grad()
def expert_spectrum_figure(layer: nn.Module, experts: Sequence[int]) -> go.Figure:
    """Singular values of each expert's matrix, with its rank in the legend."""
    figure = go.Figure()
    for n, rank in zip(experts, expert_ranks(layer, experts), strict=True):
        values = torch.linalg.svdvals(expert_matrix(layer, n).double())
        figure.add_trace(
            go.Scatter(y=values.tolist(), mode="lines", name=f"expert {n} (rank {rank})")
        )
    cfg = layer.cfg  # type: ignore[union-attr]
    figure.update_layout(
        title=f"Expert spectra (H={cfg.d_hidden}, O={cfg.d_out}: full rank is "
        f"{min(cfg.d_hidden, cfg.d_out)})",
        xaxis_title="singular value index",
        yaxis_title="singular value",
        yaxis_type="log",
        template="plotly_white",
    )
    return figure


def expert_weights_figure(layer: nn.Module, expert: int) -> go.Figure:
    """Heatmap of expert n's ``[H, O]`` matrix."""
    matrix = expert_matrix(layer, expert)
    rank = expert_ranks(layer, [expert])[0]
    figure = go.Figure(go.Heatmap(z=matrix.tolist(), colorscale="RdBu", zmid=0.0))
    figure.update_layout(
        title=f"Expert {expert}: W_n = D·diag(c_n), rank {rank}",
        xaxis_title="output dimension",
        yaxis_title="hidden unit",
        template="plotly_white",
    )
    return figure


# --- output directions and the tokens they promote ---------------------------------------------


@torch.no_grad()
def mean_hidden(model: HookedRootModule, layer: nn.Module, tokens: Tensor) -> Tensor:
    """An MxD's mean hidden units z̄ ``[H]`` over the non-special positions of ``tokens``."""
    mxd = _require_mxd(layer)
    acts = hook_activations(model, layer.cfg.metadata.hook_name, tokens)  # type: ignore[union-attr]
    keep = ~torch.isin(tokens, torch.tensor(special_token_ids(model), device=tokens.device))
    if not keep.any():
        keep = torch.ones_like(tokens, dtype=torch.bool)
    return mxd.hidden(mxd.process_sae_in(acts[keep])).mean(0)


@torch.no_grad()
def output_direction(layer: nn.Module, code: int, hidden: Tensor | None = None) -> Tensor:
    """What one unit of ``code`` adds to the layer's output, ``[O]`` (see the module docstring).

    An MxD needs ``hidden``, the hidden units z (or their mean z̄) to read expert n at.
    """
    check_code(layer, code)
    if is_mxd(layer) and hidden is None:
        raise ValueError(
            "an MxD expert's output depends on the hidden units z: pass hidden="
            "mean_hidden(model, layer, tokens)."
        )
    return output_directions(layer, hidden)[code]


@torch.no_grad()
def logit_direction(model: HookedRootModule, direction: Tensor) -> Tensor:
    """A residual-stream direction read through the final norm's linear part and the
    unembedding, ``[d_vocab]``: the logit change it causes when it dominates the residual."""
    d = direction.to(model.W_U)  # type: ignore[attr-defined]
    if model.cfg.normalization_type in ("LN", "LNPre"):  # type: ignore[attr-defined]
        d = d - d.mean()  # LayerNorm removes the mean
    scale = getattr(getattr(model, "ln_final", None), "w", None)
    if isinstance(scale, Tensor):
        d = d * scale
    return d @ model.W_U  # type: ignore[attr-defined]


@dataclass
class TokenEffects:
    """The tokens a code promotes and suppresses most, with their logit changes."""

    code: int
    promoted: list[tuple[str, int, float]]
    suppressed: list[tuple[str, int, float]]

    @property
    def promoted_ids(self) -> list[int]:
        return [i for _, i, _ in self.promoted]


def token_effects(
    model: HookedRootModule, layer: nn.Module, code: int, k: int = 10, hidden: Tensor | None = None
) -> TokenEffects:
    """The ``k`` tokens whose logits ``code``'s output direction raises (lowers) most."""
    logits = logit_direction(model, output_direction(layer, code, hidden))

    def named(values: Tensor, ids: Tensor) -> list[tuple[str, int, float]]:
        return [
            (model.to_string(torch.tensor([i])), int(i), float(v))  # type: ignore[attr-defined]
            for v, i in zip(values.tolist(), ids.tolist(), strict=True)
        ]

    top = logits.topk(k)
    bottom = (-logits).topk(k)
    return TokenEffects(code, named(top.values, top.indices), named(-bottom.values, bottom.indices))


def token_effects_figure(effects: TokenEffects) -> go.Figure:
    """Bar chart of the promoted (right) and suppressed (left) tokens of one code."""
    rows = effects.promoted[::-1] + effects.suppressed
    figure = go.Figure(
        go.Bar(
            x=[v for _, _, v in rows],
            y=[f"{t!r} ({i})" for t, i, _ in rows],
            orientation="h",
            marker_color=["#2b7bba" if v > 0 else "#c0392b" for _, _, v in rows],
        )
    )
    figure.update_layout(
        title=f"Code {effects.code}: tokens promoted and suppressed (logit change per unit)",
        xaxis_title="logit change",
        template="plotly_white",
        height=max(300, 22 * len(rows)),
    )
    return figure


# --- activations over a token set --------------------------------------------------------------


@torch.no_grad()
def code_frequencies(
    model: HookedRootModule, layer: nn.Module | CodeSource, tokens: Tensor, batch_size: int = 8
) -> Tensor:
    """How often each code is non-zero, ``[n_codes]``, over the non-special tokens."""
    source = _as_source(layer)
    fired = torch.zeros(source.n_codes, dtype=torch.float64)
    count = 0
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size]
        keep = keep_mask(model, batch)
        codes = source.codes(model, batch)[keep]
        fired += (codes != 0).sum(0).double().cpu()
        count += codes.shape[0]
    return (fired / max(count, 1)).float()


def frequency_histogram(frequencies: Tensor, name: str = "codes") -> go.Figure:
    """Histogram of log10 firing frequency; codes that never fire are counted in the title."""
    dead = int((frequencies == 0).sum())
    alive = frequencies[frequencies > 0]
    figure = go.Figure(go.Histogram(x=alive.log10().tolist(), nbinsx=50, name=name))
    figure.update_layout(
        title=f"How often each of {len(frequencies)} {name} fires ({dead} never fire)",
        xaxis_title="log10 firing frequency (fraction of tokens)",
        yaxis_title=f"number of {name}",
        template="plotly_white",
    )
    return figure


@dataclass
class ActivatingContext:
    """One position where a code fires strongly, with the text around it."""

    sequence: int
    position: int
    activation: float
    before: str
    token: str
    after: str


@torch.no_grad()
def top_activating_contexts(
    model: HookedRootModule,
    layer: nn.Module | CodeSource,
    code: int,
    tokens: Tensor,
    k: int = 10,
    window: int = 12,
    batch_size: int = 8,
) -> list[ActivatingContext]:
    """The ``k`` (sequence, position) pairs of ``tokens`` where ``code`` is largest and positive,
    skipping special tokens, strongest first (none for a code that never fires)."""
    source = _as_source(layer)
    check_code(source, code)
    values = []
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size]
        acts = source.codes(model, batch)[..., code].cpu()
        values.append(acts.masked_fill(~keep_mask(model, batch).cpu(), float("-inf")))
    flat = torch.cat(values).flatten()
    top = flat.topk(min(k, int((flat > 0).sum())))
    width = tokens.shape[1]
    contexts = []
    for value, index in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        seq, pos = divmod(index, width)
        row = tokens[seq]
        contexts.append(
            ActivatingContext(
                sequence=seq,
                position=pos,
                activation=value,
                before=model.to_string(row[max(0, pos - window) : pos]),  # type: ignore[attr-defined]
                token=model.to_string(row[pos : pos + 1]),  # type: ignore[attr-defined]
                after=model.to_string(row[pos + 1 : pos + 1 + window // 3]),  # type: ignore[attr-defined]
            )
        )
    return contexts


def contexts_figure(
    contexts: Sequence[ActivatingContext],
    title: str = "",
    sequence_labels: Sequence[str] | None = None,
) -> go.Figure:
    """A table of contexts: activation, the text before, the token (in brackets), after; with
    ``sequence_labels`` (one per sequence of the tokens searched), each context's label too."""
    header = ["activation", "context [token]"]
    values = [
        [f"{c.activation:.3f}" for c in contexts],
        [f"{c.before}[{c.token}]{c.after}" for c in contexts],
    ]
    widths = [1, 6]
    if sequence_labels is not None:
        header.insert(1, "label")
        values.insert(1, [sequence_labels[c.sequence] for c in contexts])
        widths.insert(1, 1)
    figure = go.Figure(
        go.Table(
            columnwidth=widths,
            header={"values": header, "align": "left"},
            cells={"values": values, "align": "left"},
        )
    )
    figure.update_layout(title=title or "Top-activating contexts", template="plotly_white")
    return figure
