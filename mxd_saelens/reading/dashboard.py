"""Expert (or latent) dashboards: one self-contained offline HTML page for chosen features of a
saved layer, in the spirit of SAE-Vis and Neuronpedia.

Per feature: how often it fires on held-out text, a histogram of its non-zero activations, its
top-activating contexts with every token shaded by the feature's activation (hover for the
value), the tokens its output direction promotes and suppresses through the unembedding and,
for an MxD expert, the rank and singular values of its ``H × O`` matrix. An MxD expert's output
direction depends on the hidden units; the page uses their mean over the held-out tokens
(:mod:`mxd_saelens.reading.directions`), which gives the expert's mean output direction there.

    mxd-saelens dashboard my_layer --features 12 40 --out dashboard.html
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.data.tokens import keep_mask
from mxd_saelens.reading.analysis import mean_hidden, token_effects
from mxd_saelens.reading.directions import is_mxd
from mxd_saelens.reading.probing import LayerCodes


@dataclass
class Context:
    sequence: int
    position: int
    activation: float
    tokens: list[str]  # the window's token strings
    activations: list[float]  # the feature's activation at each of them
    centre: int  # index of the top-activating token in the window


@dataclass
class FeatureStats:
    feature: int
    n_tokens: int
    frequency: float  # fraction of the (non-special) tokens where the feature fires
    histogram: tuple[list[float], list[int]]  # bin edges (n + 1), counts (n)
    contexts: list[Context]
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    singular_values: list[float] = field(default_factory=list)  # MxD experts only
    rank: int | None = None


def check_features(layer: nn.Module, features: Sequence[int]) -> list[int]:
    """The features, after checking each is a valid index (before any model forward)."""
    n = int(layer.cfg.d_sae)  # type: ignore[union-attr]
    bad = [f for f in features if not 0 <= f < n]
    if bad or not features:
        raise ValueError(
            f"feature(s) {bad or 'none given'} out of range: this layer has {n} "
            f"{'experts' if is_mxd(layer) else 'latents'}, numbered 0 to {n - 1}."
        )
    return list(dict.fromkeys(features))


@torch.no_grad()
def collect(
    model: HookedRootModule,
    layer: nn.Module,
    features: Sequence[int],
    tokens: Tensor,  # [n_seq, pos]
    n_examples: int = 8,
    window: int = 12,
    n_bins: int = 30,
    batch_size: int = 8,
) -> list[FeatureStats]:
    """Every number the page shows, for each feature, over ``tokens``."""
    features = check_features(layer, features)
    source = LayerCodes(layer)
    acts, keep = [], []
    for start in tqdm(range(0, len(tokens), batch_size), desc="dashboard", unit="batch"):
        batch = tokens[start : start + batch_size]
        acts.append(source.codes(model, batch)[..., features].float().cpu())  # [b, pos, F]
        keep.append(keep_mask(model, batch).cpu())
    all_acts, kept = torch.cat(acts), torch.cat(keep)  # [n_seq, pos, F], [n_seq, pos]
    hidden = mean_hidden(model, layer, tokens) if is_mxd(layer) else None
    return [
        _feature_stats(
            model, layer, f, all_acts[..., i], kept, tokens, hidden, n_examples, window, n_bins
        )
        for i, f in enumerate(features)
    ]


def _feature_stats(
    model: HookedRootModule,
    layer: nn.Module,
    feature: int,
    acts: Tensor,  # [n_seq, pos]
    kept: Tensor,  # [n_seq, pos] bool
    tokens: Tensor,
    hidden: Tensor | None,
    n_examples: int,
    window: int,
    n_bins: int,
) -> FeatureStats:
    values = acts[kept]
    fired = values[values != 0]
    if len(fired):
        counts = torch.histc(fired, bins=n_bins, min=float(fired.min()), max=float(fired.max()))
        edges = torch.linspace(float(fired.min()), float(fired.max()), n_bins + 1)
        histogram = (edges.tolist(), [int(c) for c in counts.tolist()])
    else:
        histogram = ([], [])
    ranked = acts.masked_fill(~kept, float("-inf")).flatten()
    top = ranked.topk(min(n_examples, int((ranked > 0).sum())))
    contexts = [
        _context(model, tokens, acts, divmod(int(i), acts.shape[1]), float(v), window)
        for v, i in zip(top.values, top.indices, strict=True)
    ]
    effects = token_effects(model, layer, feature, k=10, hidden=hidden)
    stats = FeatureStats(
        feature=feature,
        n_tokens=int(kept.sum()),
        frequency=float(len(fired) / max(len(values), 1)),
        histogram=histogram,
        contexts=contexts,
        promoted=[(t, v) for t, _, v in effects.promoted],
        suppressed=[(t, v) for t, _, v in effects.suppressed],
    )
    if is_mxd(layer):
        matrix = layer.expert_weights(feature).double()  # type: ignore[operator]
        singular = torch.linalg.svdvals(matrix)
        stats.singular_values = singular.tolist()
        stats.rank = int(torch.linalg.matrix_rank(matrix))
    return stats


def _context(
    model: HookedRootModule,
    tokens: Tensor,
    acts: Tensor,
    where: tuple[int, int],
    value: float,
    window: int,
) -> Context:
    seq, pos = where
    lo, hi = max(0, pos - window), min(tokens.shape[1], pos + 1 + window // 3)
    strings = [model.to_string(tokens[seq, i : i + 1]) for i in range(lo, hi)]  # type: ignore[attr-defined]
    return Context(seq, pos, value, strings, acts[seq, lo:hi].tolist(), pos - lo)


# --- rendering ---------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
.feature{border:1px solid #ccc;border-radius:6px;padding:12px 16px;margin:16px 0}
.row{display:flex;gap:24px;flex-wrap:wrap}.box{flex:1;min-width:300px}
.ctx{font-family:ui-monospace,monospace;font-size:13px;margin:3px 0;white-space:pre-wrap}
.tok{border-radius:2px}.centre{outline:1px solid #333}
table{border-collapse:collapse;font-size:13px}td{padding:1px 8px}svg{display:block}
.num{text-align:right;font-family:ui-monospace,monospace}
"""


def _bars(heights: Sequence[float], labels: tuple[str, str], width: int = 320) -> str:
    """An inline SVG bar chart (no scripts, no network)."""
    if not heights:
        return "<p>never fires on these tokens</p>"
    top = max(heights) or 1.0
    bar = width / len(heights)
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{100 - 100 * h / top:.1f}" width="{max(bar - 1, 1):.1f}" '
        f'height="{100 * h / top:.1f}" fill="#4a7bd0"><title>{h:.4g}</title></rect>'
        for i, h in enumerate(heights)
    )
    left, right = (html.escape(x) for x in labels)
    return (
        f'<svg width="{width}" height="118" role="img">{rects}'
        f'<text x="0" y="114" font-size="10">{left}</text>'
        f'<text x="{width}" y="114" font-size="10" text-anchor="end">{right}</text></svg>'
    )


def _visible(token: str) -> str:
    """Line breaks and tabs drawn as symbols, so each context stays on one line."""
    return token.replace("\n", "↵").replace("\r", "").replace("\t", "⇥")


def _context_html(context: Context) -> str:
    top = max(max(context.activations), 1e-12)
    spans = []
    for i, (token, value) in enumerate(zip(context.tokens, context.activations, strict=True)):
        alpha = max(0.0, value) / top
        centre = " centre" if i == context.centre else ""
        spans.append(
            f'<span class="tok{centre}" style="background:rgba(230,80,30,{alpha:.2f})" '
            f'title="{value:.4f}">{html.escape(_visible(token))}</span>'
        )
    return f'<div class="ctx"><b>{context.activation:.3f}</b>  {"".join(spans)}</div>'


def _tokens_table(title: str, rows: Sequence[tuple[str, float]]) -> str:
    body = "".join(
        f'<tr><td>{html.escape(repr(t))}</td><td class="num">{v:+.3f}</td></tr>' for t, v in rows
    )
    return f"<div><b>{title}</b><table>{body}</table></div>"


def _feature_html(stats: FeatureStats, kind: str) -> str:
    edges, counts = stats.histogram
    spectrum = ""
    if stats.singular_values:
        spectrum = (
            f'<div class="box"><b>rank {stats.rank}</b>; singular values of W_n = D·diag(c_n)'
            + _bars(stats.singular_values, ("largest", "smallest"))
            + "</div>"
        )
    histogram_labels = (f"{edges[0]:.3g}", f"{edges[-1]:.3g}") if edges else ("", "")
    contexts = "".join(_context_html(c) for c in stats.contexts) or "<p>no context</p>"
    return f"""<section class="feature" id="feature-{stats.feature}">
<h2>{kind} {stats.feature}</h2>
<p>fires on {100 * stats.frequency:.3f} % of {stats.n_tokens:,} held-out tokens</p>
<div class="row"><div class="box"><b>activations where it fires</b>
{_bars([float(c) for c in counts], histogram_labels)}</div>{spectrum}</div>
<div class="row">{_tokens_table("promoted tokens (logit change)", stats.promoted)}
{_tokens_table("suppressed tokens", stats.suppressed)}</div>
<h3>top-activating contexts</h3>{contexts}
</section>"""


def render(stats: Sequence[FeatureStats], title: str, mxd: bool) -> str:
    kind = "Expert" if mxd else "Latent"
    note = (
        "An expert's promoted and suppressed tokens are read from its mean output direction over "
        "these tokens (its output depends on the hidden units)."
        if mxd
        else "A latent's promoted and suppressed tokens are read from its decoder row."
    )
    sections = "".join(_feature_html(s, kind) for s in stats)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{note}</p>"
        f"{sections}</body></html>"
    )


def write_dashboard(
    layer: nn.Module,
    model: HookedRootModule,
    features: Sequence[int],
    tokens: Tensor,
    out_path: str | Path,
    title: str = "Dashboard",
    n_examples: int = 8,
) -> Path:
    stats = collect(model, layer, features, tokens, n_examples=n_examples)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(stats, title, is_mxd(layer)), encoding="utf-8")
    return path
