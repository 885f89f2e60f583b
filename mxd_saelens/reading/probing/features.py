"""Probing features: each text's codes mean-pooled over a window of its tokens (sample-level),
or read at one named token position (token-level)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.reading.probing.codes import CodeSource
from mxd_saelens.reading.probing.labelled_sets import LabelledTexts

PAPER_CONTEXT = 128


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def text_window(tokenizer: Any, text: str, n: int, from_end: bool) -> list[int]:
    """The first (or last) ``n`` tokens of ``text`` (fewer if the text is shorter)."""
    # tokenising a 20,000-character file to keep 128 tokens is wasteful: cut a generous
    # character window first and drop the token the cut may have split
    budget = n * 16
    if len(text) > budget:
        ids = _encode(tokenizer, text[-budget:] if from_end else text[:budget])
        ids = ids[1:] if from_end else ids[:-1]
        if len(ids) >= n:
            return ids[-n:] if from_end else ids[:n]
    ids = _encode(tokenizer, text)
    return ids[-n:] if from_end else ids[:n]


def _bos(model: HookedRootModule) -> list[int]:
    tokenizer = model.tokenizer  # type: ignore[attr-defined]
    prepend = getattr(model.cfg, "default_prepend_bos", True)  # type: ignore[attr-defined]
    return [tokenizer.bos_token_id] if prepend and tokenizer.bos_token_id is not None else []


def resolve_context(model: HookedRootModule, context_size: int | None) -> int:
    """Text tokens per sample: the paper's 128, or what fits beside BOS in the model's context."""
    room = int(model.cfg.n_ctx) - len(_bos(model))  # type: ignore[attr-defined]
    if context_size is None:
        return min(PAPER_CONTEXT, room)
    if not 1 <= context_size <= room:
        raise ValueError(
            f"context_size={context_size} does not fit: the model takes {room} text tokens "
            "after BOS."
        )
    return context_size


def _pad(rows: list[list[int]], pad_id: int) -> Tensor:
    tokens = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens


def _batched_codes(
    model: HookedRootModule,
    source: CodeSource,
    rows: list[list[int]],
    reduce: Callable[[Tensor, int], Tensor],
    batch_size: int,
) -> Tensor:
    """Run ``source`` on right-padded rows and reduce each row's ``[pos, n_codes]`` codes.

    Causal attention means padding on the right never changes the real positions' codes.
    """
    pad_id = model.tokenizer.pad_token_id or 0  # type: ignore[attr-defined]
    device = getattr(model.cfg, "device", "cpu")  # type: ignore[attr-defined]
    # one buffer for every row: a small tensor kept per text between the batches' large freed
    # code tensors fragments the heap, which then grows by about a batch's codes per batch
    out = torch.zeros(len(rows), source.n_codes)
    starts = range(0, len(rows), batch_size)
    # probing a few thousand texts takes minutes on a CPU: show where it is
    for start in tqdm(starts, desc=f"codes of {source.name}", unit="batch", leave=False):
        chunk = rows[start : start + batch_size]
        codes = source.codes(model, _pad(chunk, pad_id).to(device)).cpu()
        for i, row in enumerate(chunk):
            out[start + i] = reduce(codes[i], len(row))
        del codes
    return out


def pooled_features(
    model: HookedRootModule,
    source: CodeSource,
    data: LabelledTexts,
    context_size: int | None = None,
    drop_short: bool = False,
    batch_size: int = 16,
) -> tuple[Tensor, LabelledTexts]:
    """Each text's codes mean-pooled over its first ``context_size`` tokens (last, for code),
    ``[n_samples, n_codes]``.

    BOS is prepended as in training and left out of the mean. A text shorter than the context
    is an error unless ``drop_short``; returns the features and the texts they belong to.
    """
    n = resolve_context(model, context_size)
    tokenizer = model.tokenizer  # type: ignore[attr-defined]
    bos = _bos(model)
    windows = [
        text_window(tokenizer, t, n, c) for t, c in zip(data.texts, data.is_code, strict=True)
    ]
    short = [i for i, w in enumerate(windows) if len(w) < n]
    if short and not drop_short:
        shortest = min(len(windows[i]) for i in short)
        raise ValueError(
            f"{len(short)} of {len(data)} texts are shorter than the context of {n} tokens (the "
            f"shortest has {shortest}): pass drop_short=True to leave them out, or a smaller "
            "context_size."
        )
    keep = [i for i in range(len(data)) if len(windows[i]) >= n]
    if not keep:
        raise ValueError(f"no text has {n} tokens; use a smaller context_size.")
    rows = [bos + windows[i] for i in keep]
    start = len(bos)

    def mean_pool(codes: Tensor, length: int) -> Tensor:
        return codes[start:length].mean(0)

    return _batched_codes(model, source, rows, mean_pool, batch_size), data.subset(keep)


def token_position(tokenizer: Any, ids: list[int], position: int | str) -> int | None:
    """Index into ``ids`` of a position: an int (negative counts from the end), or a token
    string, meaning its first occurrence. None when the text has no such position."""
    if isinstance(position, str):
        target = _encode(tokenizer, position)
        if len(target) != 1:
            raise ValueError(
                f"{position!r} is {len(target)} tokens for this tokenizer; name a single token."
            )
        return ids.index(target[0]) if target[0] in ids else None
    index = position if position >= 0 else len(ids) + position
    return index if 0 <= index < len(ids) else None


def token_features(
    model: HookedRootModule,
    source: CodeSource,
    data: LabelledTexts,
    position: int | str,
    drop_missing: bool = False,
    batch_size: int = 16,
) -> tuple[Tensor, LabelledTexts]:
    """Token-level probing features, ``[n_samples, n_codes]``: the codes at one named position
    of each text, read within the model's context (the first tokens of the text, after BOS)."""
    tokenizer = model.tokenizer  # type: ignore[attr-defined]
    bos = _bos(model)
    room = int(model.cfg.n_ctx) - len(bos)  # type: ignore[attr-defined]
    windows = [text_window(tokenizer, t, room, from_end=False) for t in data.texts]
    where = [token_position(tokenizer, w, position) for w in windows]
    missing = [i for i, p in enumerate(where) if p is None]
    if missing and not drop_missing:
        raise ValueError(
            f"{len(missing)} of {len(data)} texts have no position {position!r} within "
            f"{room} tokens: pass drop_missing=True to leave them out."
        )
    keep = [i for i, p in enumerate(where) if p is not None]
    if not keep:
        raise ValueError(f"no text has position {position!r}.")
    rows = [bos + windows[i][: where[i] + 1] for i in keep]  # type: ignore[operator]

    def last(codes: Tensor, length: int) -> Tensor:
        return codes[length - 1]

    return _batched_codes(model, source, rows, last, batch_size), data.subset(keep)
