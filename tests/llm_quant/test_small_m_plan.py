"""The host-side plan of the decode kernels (no GPU needed): how K is cut into split-K slices, and the candidates
the runtime times at load. The kernels themselves are checked on a GPU (tests/gpu/test_kernels.py)."""

from __future__ import annotations

import pytest

from llm_quant.runtime.cuda import kernels


@pytest.mark.parametrize("k", [1, 100, 512, 1000, 4096, 14336, 14337])
@pytest.mark.parametrize("block_k", [64, 256, 512])
@pytest.mark.parametrize("split", [1, 2, 3, 4, 8])
def test_split_slices_cover_k_once(k, block_k, split):
    per, slices = kernels._split(k, block_k, split)
    assert per % block_k == 0 and per > 0  # whole blocks: a block never straddles two slices
    assert 1 <= slices <= split
    covered = [(s * per, min((s + 1) * per, k)) for s in range(slices)]
    assert covered[0][0] == 0 and covered[-1][1] == k
    assert all(a < b for a, b in covered), "an empty slice would launch programs that add nothing"
    assert all(covered[i][1] == covered[i + 1][0] for i in range(slices - 1))


def test_candidates():
    assert kernels.ONE_ROW[0] == kernels.SmallM() == kernels.FEW_ROWS[0], "the unsplit kernel is always a candidate"
    assert {c.kernel for c in kernels.ONE_ROW} <= {"unsplit", "gemv", "cores"}
    assert {c.kernel for c in kernels.FEW_ROWS} <= {"unsplit", "dot", "cores"}, "gemv takes one row"
    assert len(set(kernels.ONE_ROW)) == len(kernels.ONE_ROW) and len(set(kernels.FEW_ROWS)) == len(kernels.FEW_ROWS)
    assert kernels.SmallM("gemv", 16, 512, 4, prequant=True).label == "gemv+row_quantize n16 k512 split4 w4"


def test_rows_a_variant_cannot_take_are_refused_before_any_kernel():
    torch = pytest.importorskip("torch")
    w = torch.zeros(8, 64, dtype=torch.int8)
    with pytest.raises(ValueError, match="takes one row, got 2"):
        kernels.small_m(kernels.SmallM("gemv", 16, 64, 1), torch.zeros(2, 64), w, torch.ones(8), act=kernels.ACT_NONE)
    with pytest.raises(ValueError, match="takes at most 16 rows, got 17"):
        kernels.small_m(kernels.SmallM("dot", 64, 64, 1), torch.zeros(17, 64), w, torch.ones(8), act=kernels.ACT_NONE)
