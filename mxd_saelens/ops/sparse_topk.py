"""The fast path shared by MxD and TopK transcoders: top-k selection with a sparse backward,
and a sparse decode over the k selected rows.

A TopK layer computes ``pre = x @ W + b`` densely (the selection needs every unit), but only
k units per token survive. The plain autograd graph would still backpropagate through the full
``[tokens, n_units]`` matrix. Here the backward touches only the k selected columns of ``W``,
and the decode gathers k rows of the decoder instead of multiplying a dense, mostly-zero
coefficient matrix. ``dense_topk`` / ``dense_decode`` are the plain formulations that the tests
hold these equal to.

On CPU the top-k itself is also sped up (:func:`topk_largest`): ``torch.topk`` runs a scalar
loop per row, with a much slower path once ``64·k > n_units``; a cheap vectorised lower bound on
each row's k-th largest value first cuts the candidates to about 1.4·k per row.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class TopKCodes(NamedTuple):
    """The k selected units of each token: ``values[..., j]`` is the code of unit ``indices[..., j]``."""

    values: Tensor  # [..., k], ReLU'd
    indices: Tensor  # [..., k], int64


def _flatten_rows(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


class _SelectedPreactivations(torch.autograd.Function):
    """``x @ W[:, idx] + b[idx]`` for the selected units only, given their precomputed values.

    The forward reuses values already gathered from the dense pre-activations; the backward
    scatters the gradient into the selected columns of W through a sparse ``[units, tokens]``
    matrix, so it costs ``tokens·k·d_in`` rather than ``tokens·n_units·d_in``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,  # [B, d_in]
        weight: Tensor,  # [d_in, n_units]
        bias: Tensor,  # [n_units]
        indices: Tensor,  # [B, k]
        selected: Tensor,  # [B, k], equal to (x @ weight + bias).gather(-1, indices)
    ) -> Tensor:
        ctx.save_for_backward(x, weight, indices)
        return selected

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, weight, indices = ctx.saved_tensors  # type: ignore[attr-defined]
        n_units = weight.shape[1]
        flat_idx = indices.reshape(-1)
        flat_grad = grad.reshape(-1).to(weight.dtype)
        grad_x = grad_weight = grad_bias = None
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        if needs[1]:
            grad_weight = _scatter_outer(flat_idx, flat_grad, x, n_units, indices.shape[1]).T
        if needs[2]:
            grad_bias = torch.zeros(n_units, dtype=weight.dtype, device=weight.device)
            grad_bias.index_add_(0, flat_idx, flat_grad)
        if needs[0]:
            grad_x = F.embedding_bag(
                indices, weight.T.contiguous(), per_sample_weights=grad.to(weight.dtype), mode="sum"
            ).to(x.dtype)
        return grad_x, grad_weight, grad_bias, None, None


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A CSR tensor from indices built here (valid by construction, so not re-checked)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _scatter_outer(flat_idx: Tensor, flat_grad: Tensor, x: Tensor, n_units: int, k: int) -> Tensor:
    """``Σ_{(b,j)} grad[b,j] · x[b]`` accumulated into row ``idx[b,j]`` of an ``[n_units, d_in]``
    matrix, as one CSR sparse-dense product (rows of the CSR matrix are units)."""
    order = torch.argsort(flat_idx, stable=True)
    token_of_entry = torch.div(order, k, rounding_mode="floor")
    counts = torch.bincount(flat_idx, minlength=n_units)
    crow = torch.zeros(n_units + 1, dtype=torch.int64, device=x.device)
    torch.cumsum(counts, 0, out=crow[1:])
    if flat_grad.dtype in (torch.float32, torch.float64):
        sparse = _csr(crow, token_of_entry, flat_grad[order], (n_units, x.shape[0]))
        return sparse @ x.to(flat_grad.dtype)
    # half precision: sparse CSR products are not implemented for every backend, index_add is
    out = torch.zeros(n_units, x.shape[1], dtype=flat_grad.dtype, device=x.device)
    out.index_add_(0, flat_idx, flat_grad[:, None] * x.repeat_interleave(k, dim=0))
    return out


_GROUPS_PER_K = 2  # threshold from the k-th largest of 2·k column-group maxima
# Measured on a 2-core EPYC, 4096 rows, one thread: the prefilter wins clearly for n < 256·k
# (7154 units, k = 32 / 64 / 128: 74 → 58, 116 → 77, 245 → 104 ms; 14331 units, k = 64 / 128:
# 225 → 178, 377 → 285 ms) and loses for n ≥ 256·k (14331 units, k = 32: 118 → 178 ms).
_PREFILTER_MAX_UNITS_PER_K = 256


def topk_largest(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``pre.topk(k, dim=-1, sorted=False)`` for a 2-D tensor: the same values, the same index
    set (up to ties at the k-th value, which ``torch.topk`` breaks arbitrarily too).

    On CPU, ``torch.topk`` is a scalar loop over every element of every row, and past
    ``64·k > n`` it switches to an ``nth_element`` path several times slower. Here the columns
    are split into ``G = 2·k`` strided groups; the k-th largest group maximum ``t`` is at most
    the row's k-th largest value (it is one of k distinct elements ≥ t), so every top-k element
    is ``≥ t``. Those candidates (about 1.4·k per row for continuous values) are compacted into
    a ``[rows, M]`` matrix and ``torch.topk`` runs on that. ``torch.topk`` is used directly when
    a row has ≥ 256·k entries (its heap path is then as fast), when the bound fails (NaN) or
    leaves too many candidates, and on other devices (fast there; the compaction would
    synchronise).
    """
    rows, n = pre.shape
    groups = _GROUPS_PER_K * k
    per_group = n // groups
    if (
        pre.device.type != "cpu"
        or n >= _PREFILTER_MAX_UNITS_PER_K * k  # torch.topk's heap path is as fast there
        or per_group < 2
        or rows == 0
        or not pre.is_contiguous()
    ):
        return pre.topk(k, dim=-1, sorted=False)
    group_max = pre[:, : per_group * groups].view(rows, per_group, groups).amax(1)
    threshold = group_max.topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    flat = pre.ge(threshold).view(-1).nonzero().squeeze(1)  # row-major candidate positions
    row_of = flat.div(n, rounding_mode="floor")
    counts = torch.bincount(row_of, minlength=rows)
    width = int(counts.max())
    if int(counts.min()) < k or 2 * width > n:  # NaN in a row, or too many ties to gain
        return pre.topk(k, dim=-1, sorted=False)
    starts = counts.cumsum(0).sub_(counts)
    dest = torch.arange(flat.numel(), device=pre.device).sub_(starts[row_of])
    dest.add_(row_of * width)
    candidates = pre.new_full((rows * width,), float("-inf"))
    candidates[dest] = pre.view(-1)[flat]
    columns = torch.zeros(rows * width, dtype=torch.int64, device=pre.device)
    columns[dest] = flat.sub_(row_of * n)
    values, slot = candidates.view(rows, width).topk(k, dim=-1, sorted=False)
    return values, columns.view(rows, width).gather(1, slot)


def sparse_topk(x: Tensor, weight: Tensor, bias: Tensor, k: int) -> tuple[TopKCodes, Tensor]:
    """Top-k ReLU codes of ``x @ weight + bias`` with a backward over the selected units only.

    Returns the codes and the dense pre-activations (detached; used only for selection, logging
    and the hook point). Works on any leading shape.
    """
    lead = x.shape[:-1]
    x2 = _flatten_rows(x)
    with torch.no_grad():
        pre = torch.addmm(bias, x2, weight)
        selected, indices = topk_largest(pre, k)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        selected = _SelectedPreactivations.apply(x2, weight, bias, indices, selected)
    values = selected.relu()
    return (
        TopKCodes(values.reshape(*lead, k), indices.reshape(*lead, k)),
        pre.reshape(*lead, -1),
    )


def subset_topk(
    x: Tensor,  # [B, d_in]
    weight: Tensor,  # [d_in, n_units]
    bias: Tensor,  # [n_units]
    pre: Tensor,  # [B, n_units], x @ weight + bias already computed (detached)
    units: Tensor,  # [M], int64, the units allowed to be selected
    k: int,  # ≤ M
) -> TopKCodes:
    """Top-k ReLU codes among ``units`` only, selected from the dense pre-activations that the
    main top-k already computed, with the same sparse backward (only the k selected columns of
    ``weight`` get a gradient). Codes index the full ``n_units``."""
    x2 = _flatten_rows(x)
    with torch.no_grad():
        # select among the M allowed columns: a top-k over M, not over every unit
        selected, slot = topk_largest(_flatten_rows(pre).index_select(1, units), k)
        indices = units[slot]
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        selected = _SelectedPreactivations.apply(x2, weight, bias, indices, selected)
    return TopKCodes(selected.relu(), indices)


def dense_topk(x: Tensor, weight: Tensor, bias: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The plain formulation: dense pre-activations, top-k scattered into a dense code tensor."""
    pre = x @ weight + bias
    codes = pre.relu()
    top = codes.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(codes).scatter(-1, top.indices, top.values), pre


class _GatheredRows(torch.autograd.Function):
    """``Σ_j values[b, j] · decoder[indices[b, j]]`` with a sparse-matrix backward (CPU, fp32/64).

    The forward is ``embedding_bag``. Its CPU backward is slow in both halves; here the decoder
    gradient ``Σ values[b,j]·grad[b]`` into row ``indices[b,j]`` is one CSR product (the same
    as the gate's), and the values' gradient ``<grad[b], decoder[indices[b,j]]>`` is a sampled
    dense-dense product over the ``[tokens, units]`` pattern of the indices.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        values: Tensor,  # [B, k]
        indices: Tensor,  # [B, k]
        decoder: Tensor,  # [n_units, d_out]
    ) -> Tensor:
        ctx.save_for_backward(values, indices, decoder)
        return F.embedding_bag(indices, decoder, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        values, indices, decoder = ctx.saved_tensors  # type: ignore[attr-defined]
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        rows, k = indices.shape
        grad = grad.contiguous()
        grad_values = grad_decoder = None
        if needs[0]:
            pattern = _csr(
                torch.arange(0, rows * k + 1, k, device=indices.device),
                indices.reshape(-1),
                values.new_zeros(rows * k),
                (rows, decoder.shape[0]),
            )
            grad_values = torch.sparse.sampled_addmm(pattern, grad, decoder.T, beta=0.0)
            grad_values = grad_values.values().reshape(rows, k)
        if needs[2]:
            grad_decoder = _scatter_outer(
                indices.reshape(-1), values.reshape(-1), grad, decoder.shape[0], k
            )
        return grad_values, None, grad_decoder


def sparse_decode(codes: TopKCodes, decoder: Tensor) -> Tensor:
    """``Σ_j values[..., j] · decoder[indices[..., j]]``: a gather of k decoder rows per token."""
    lead = codes.values.shape[:-1]
    k = codes.values.shape[-1]
    indices = codes.indices.reshape(-1, k)
    values = codes.values.reshape(-1, k).to(decoder.dtype)
    if (
        decoder.device.type == "cpu"
        and decoder.dtype in (torch.float32, torch.float64)
        and torch.is_grad_enabled()
        and (values.requires_grad or decoder.requires_grad)
    ):
        out = _GatheredRows.apply(values, indices, decoder)
    else:
        out = F.embedding_bag(indices, decoder, per_sample_weights=values, mode="sum")
    return out.reshape(*lead, decoder.shape[-1])


def dense_decode(dense_codes: Tensor, decoder: Tensor) -> Tensor:
    """The plain formulation: a dense ``codes @ decoder`` over every unit."""
    return dense_codes.to(decoder.dtype) @ decoder


@torch.no_grad()
def sparse_code_matrix(codes: TopKCodes, n_units: int) -> Tensor:
    """The codes as a detached ``[tokens, n_units]`` sparse COO tensor: what SAELens's trainer
    needs for its firing statistics, without writing a dense tokens × units matrix."""
    values = codes.values.reshape(-1, codes.values.shape[-1])
    indices = codes.indices.reshape(-1, codes.indices.shape[-1])
    rows = torch.arange(values.shape[0], device=values.device).repeat_interleave(values.shape[1])
    return torch.sparse_coo_tensor(
        torch.stack([rows, indices.reshape(-1)]),
        values.reshape(-1),
        size=(values.shape[0], n_units),
        check_invariants=False,
    )


def densify(codes: TopKCodes, n_units: int) -> Tensor:
    """Scatter top-k codes into a dense ``[..., n_units]`` tensor (differentiable in the values)."""
    shape = (*codes.values.shape[:-1], n_units)
    dense = codes.values.new_zeros(shape)
    return dense.scatter(-1, codes.indices, codes.values)
