"""The fast ops equal torch's plain ones: float32, float64 and bfloat16, forward and backward,
with and without the top-k prefilter, ties and NaN included."""

from __future__ import annotations

import pytest
import torch

from mxd_saelens.ops.sparse_topk import (
    _PREFILTER_MAX_UNITS_PER_K,
    TopKCodes,
    dense_decode,
    dense_topk,
    densify,
    sparse_code_matrix,
    sparse_decode,
    sparse_topk,
    subset_topk,
    topk_largest,
)

TOLERANCE = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-10},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
}
DTYPES = list(TOLERANCE)


def _inputs(dtype: torch.dtype, rows: int = 24, d_in: int = 16, units: int = 300, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d_in, generator=generator).to(dtype).requires_grad_()
    w = torch.randn(d_in, units, generator=generator).to(dtype).requires_grad_()
    b = torch.randn(units, generator=generator).to(dtype).requires_grad_()
    return x, w, b


def _same_selection(values: torch.Tensor, indices: torch.Tensor, pre: torch.Tensor, k: int):
    """A valid top-k of each row of ``pre``: the values are those entries, and they are the k
    largest (as a multiset, the same as torch.topk's)."""
    torch.testing.assert_close(pre.gather(-1, indices), values, rtol=0, atol=0)
    expected = pre.topk(k, dim=-1).values.sort(-1).values
    torch.testing.assert_close(values.sort(-1).values, expected, rtol=0, atol=0)
    assert (indices.sort(-1).values.diff(dim=-1) > 0).all()  # k distinct units per row


@pytest.mark.parametrize("units", [300, _PREFILTER_MAX_UNITS_PER_K * 4 + 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_largest_is_a_topk_with_and_without_the_prefilter(units: int, dtype) -> None:
    k = 4  # 300 units: the prefilter runs; 256·k + 8: torch.topk directly
    pre = torch.randn(64, units, generator=torch.Generator().manual_seed(1)).to(dtype)
    values, indices = topk_largest(pre, k)
    _same_selection(values, indices, pre, k)


def test_topk_largest_with_ties_at_the_boundary_and_whole_rows_tied() -> None:
    pre = torch.randn(32, 400, generator=torch.Generator().manual_seed(2))
    pre[:, :10] = 5.0  # ten-way tie at the top for k = 4
    pre[:16] = 1.0  # half the rows: every entry equal
    values, indices = topk_largest(pre, 4)
    _same_selection(values, indices, pre, 4)


def test_topk_largest_with_nan_falls_back_to_torch_topk() -> None:
    pre = torch.randn(8, 400, generator=torch.Generator().manual_seed(3))
    pre[2, 7] = float("nan")
    values, indices = topk_largest(pre, 4)
    reference_values, reference_indices = pre.topk(4, dim=-1, sorted=False)
    torch.testing.assert_close(values, reference_values, equal_nan=True)
    assert torch.equal(indices.sort(-1).values, reference_indices.sort(-1).values)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_topk_and_decode_equal_the_dense_formulation(dtype) -> None:
    k = 8
    x, w, b = _inputs(dtype)
    decoder = torch.randn(300, 12, generator=torch.Generator().manual_seed(4)).to(dtype)
    decoder.requires_grad_()
    codes, pre = sparse_topk(x, w, b, k)
    out = sparse_decode(codes, decoder)
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    fast = [t.grad.clone() for t in (x, w, b, decoder)]
    for t in (x, w, b, decoder):
        t.grad = None

    dense_codes, dense_pre = dense_topk(x, w, b, k)
    reference = dense_decode(dense_codes, decoder)
    (reference * grad_out).sum().backward()
    slow = [t.grad for t in (x, w, b, decoder)]

    # bfloat16 sums in a different order: compare on the scale of the largest entry
    tolerance = TOLERANCE[dtype]
    pairs = [(pre, dense_pre), (densify(codes, 300), dense_codes), (out, reference)]
    for got, want in [*pairs, *zip(fast, slow, strict=True)]:
        scale = max(1.0, float(want.detach().abs().max()))
        atol = tolerance["atol"] * scale
        torch.testing.assert_close(got.detach(), want.detach(), rtol=tolerance["rtol"], atol=atol)


def test_subset_topk_selects_only_allowed_units_with_the_same_backward() -> None:
    x, w, b = _inputs(torch.float64)
    allowed = torch.arange(0, 300, 3)
    pre = (x @ w + b).detach()
    codes = subset_topk(x, w, b, pre, allowed, k=5)
    assert torch.isin(codes.indices, allowed).all()
    # the reference: the dense top-k over the allowed columns only
    masked = torch.full_like(pre, float("-inf"))
    masked[:, allowed] = (x @ w + b)[:, allowed]
    top = masked.topk(5, dim=-1)
    reference = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    grad = torch.randn(24, 300, dtype=torch.float64)
    (densify(codes, 300) * grad).sum().backward()
    fast = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    (reference * grad).sum().backward()
    for got, want in zip(fast, (x.grad, w.grad, b.grad), strict=True):
        torch.testing.assert_close(got, want)


def test_sparse_code_matrix_holds_the_codes() -> None:
    values = torch.tensor([[0.5, 0.0], [2.0, 1.0]])
    indices = torch.tensor([[3, 1], [0, 4]])
    matrix = sparse_code_matrix(TopKCodes(values, indices), n_units=5).to_dense()
    assert torch.equal(matrix, densify(TopKCodes(values, indices), 5))
