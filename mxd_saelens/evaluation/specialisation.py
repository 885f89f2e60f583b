"""How specialised a layer's experts (or latents) are, on labelled held-out text.

Faithfulness alone cannot tell a layer whose tokens each use their own few experts from one in
which a few always-on experts carry the MLP. These numbers can:

- ``top_share``: the share of all firings (token, expert pairs) taken by the ``top`` most used
  experts (32 by default); k/N·32 if usage were uniform, 1 if 32 experts did everything;
- ``effective_experts``: exp of the entropy of the usage distribution, the number of equally
  used experts with the same entropy;
- ``jaccard_random`` / ``jaccard_same_class``: the mean Jaccard overlap of the expert sets of two
  tokens drawn at random, and of two tokens drawn from different texts of the same class
  (e.g. both Polish prose). Specialised experts give a small random overlap, and a same-class
  overlap above it;
- ``dead_fraction``: experts that never fire on these tokens.

Tokens: each text's first ``context_size`` tokens (a source file's last), after BOS, as in
sparse probing; BOS and padding are left out.

:func:`layer_specialisation` puts these beside the sparse-probing score (mean F1 ± SE on the
bundled corpus's natural-language labels, :mod:`mxd_saelens.reading.probing`): the numbers the demo, the
evaluation command and the benchmarks report beside each layer's ΔCE.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.reading.probing.codes import LayerCodes
from mxd_saelens.reading.probing.features import _bos, _pad, resolve_context, text_window
from mxd_saelens.reading.probing.labelled_sets import LabelledTexts, corpus_labelled_set
from mxd_saelens.reading.probing.probe import ProbeResult, sparse_probe


@dataclass
class Specialisation:
    n_tokens: int
    top: int
    top_share: float
    effective_experts: float
    jaccard_random: float
    jaccard_same_class: float
    dead_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def firing_sets(
    model: HookedRootModule,
    layer: nn.Module,
    data: LabelledTexts,
    context_size: int | None = None,
    batch_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Which codes fire at each kept token, ``[T, n_codes]`` bool, and each token's text index
    ``[T]``."""
    source = LayerCodes(layer)
    n = resolve_context(model, context_size)
    tokenizer = model.tokenizer  # type: ignore[attr-defined]
    bos = _bos(model)
    rows = [
        bos + text_window(tokenizer, text, n, is_code)
        for text, is_code in zip(data.texts, data.is_code, strict=True)
    ]
    pad_id = tokenizer.pad_token_id or 0
    lengths = torch.tensor([len(row) - len(bos) for row in rows])
    # filled in place: per-text pieces kept between the batches' freed code tensors, then
    # concatenated, would fragment the heap and hold the firings twice
    fired = torch.zeros(int(lengths.sum()), source.n_codes, dtype=torch.bool)
    owner = torch.repeat_interleave(torch.arange(len(rows)), lengths)
    offset = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        codes = source.codes(model, _pad(chunk, pad_id)).cpu()  # [b, pos, n_codes]
        for i, row in enumerate(chunk):
            fired[offset : offset + len(row) - len(bos)] = codes[i, len(bos) : len(row)] != 0
            offset += len(row) - len(bos)
        del codes
    return fired, owner


def _mean_jaccard(fired: Tensor, pairs: Tensor) -> float:
    a, b = fired[pairs[:, 0]], fired[pairs[:, 1]]
    union = (a | b).sum(-1).double()
    inter = (a & b).sum(-1).double()
    keep = union > 0
    return float((inter[keep] / union[keep]).mean()) if keep.any() else math.nan


def _random_pairs(n_tokens: int, n_pairs: int, rng: random.Random) -> Tensor:
    pairs = [rng.sample(range(n_tokens), 2) for _ in range(n_pairs)]
    return torch.tensor(pairs)


def _same_class_pairs(owner: Tensor, labels: list[str], n_pairs: int, rng: random.Random) -> Tensor:
    """Pairs of tokens from two different texts with the same label."""
    by_class: dict[str, list[int]] = {}
    for text, label in enumerate(labels):
        by_class.setdefault(label, []).append(text)
    tokens_of = {t: (owner == t).nonzero()[:, 0].tolist() for t in range(len(labels))}
    classes = [c for c, texts in by_class.items() if len(texts) >= 2]
    if not classes:
        raise ValueError("no class has two texts: same-class overlap cannot be measured.")
    pairs = []
    while len(pairs) < n_pairs:
        first, second = rng.sample(by_class[rng.choice(classes)], 2)
        if tokens_of[first] and tokens_of[second]:
            pairs.append((rng.choice(tokens_of[first]), rng.choice(tokens_of[second])))
    return torch.tensor(pairs)


def usage_metrics(fired: Tensor, top: int = 32) -> tuple[float, float, float]:
    """(top share, effective number, dead fraction) from ``[T, n_codes]`` firings."""
    counts = fired.sum(0).double()  # [n_codes]
    total = counts.sum()
    top_share = float(counts.topk(min(top, len(counts))).values.sum() / total)
    p = counts[counts > 0] / total
    effective = float(torch.exp(-(p * p.log()).sum()))
    return top_share, effective, float((counts == 0).double().mean())


def specialisation(
    model: HookedRootModule,
    layer: nn.Module,
    data: LabelledTexts,
    top: int = 32,
    n_pairs: int = 4000,
    context_size: int | None = None,
    seed: int = 0,
) -> Specialisation:
    """The module docstring's metrics of ``layer`` on the texts of ``data``."""
    fired, owner = firing_sets(model, layer, data, context_size)
    rng = random.Random(seed)
    top_share, effective, dead = usage_metrics(fired, top)
    return Specialisation(
        n_tokens=int(fired.shape[0]),
        top=top,
        top_share=top_share,
        effective_experts=effective,
        jaccard_random=_mean_jaccard(fired, _random_pairs(len(fired), n_pairs, rng)),
        jaccard_same_class=_mean_jaccard(
            fired, _same_class_pairs(owner, data.labels, n_pairs, rng)
        ),
        dead_fraction=dead,
    )


SPECIALISATION_FIELDS = (
    "probe_f1",
    "probe_f1_se",
    "top_share",
    "effective_experts",
    "jaccard_random",
    "jaccard_same_class",
)


@dataclass
class LayerSpecialisation:
    """A layer's probing result and usage metrics (the module docstring's)."""

    probe: ProbeResult
    usage: Specialisation

    def row(self) -> dict[str, float]:
        """The fields a results row carries (``SPECIALISATION_FIELDS``)."""
        usage = self.usage
        return {
            "probe_f1": self.probe.mean_f1,
            "probe_f1_se": self.probe.mean_f1_se(),
            "top_share": usage.top_share,
            "effective_experts": usage.effective_experts,
            "jaccard_random": usage.jaccard_random,
            "jaccard_same_class": usage.jaccard_same_class,
        }


def layer_specialisation(
    model: HookedRootModule,
    layers: Mapping[str, nn.Module],
    per_class: int = 100,
    top: int = 32,
) -> dict[str, LayerSpecialisation]:
    """For each layer: the sparse probe of its codes on ``per_class`` texts per natural
    language of the bundled corpus (both splits, the paper's protocol), and its usage metrics on
    the held-out split's texts."""
    probe_set = corpus_labelled_set("natural_language", per_class=per_class)
    held_out = corpus_labelled_set("natural_language", splits=("heldout",))
    return {
        name: LayerSpecialisation(
            probe=sparse_probe(model, LayerCodes(layer, name=name), probe_set),
            usage=specialisation(model, layer, held_out, top=top),
        )
        for name, layer in layers.items()
    }


def add_specialisation(
    rows: list[dict[str, Any]], found: Mapping[str, LayerSpecialisation]
) -> list[dict[str, Any]]:
    """``rows`` (results rows keyed by ``name``) with each named layer's specialisation fields
    added in place; rows of other layers are left as they are."""
    for row in rows:
        if row["name"] in found:
            row.update(found[row["name"]].row())
    return rows
