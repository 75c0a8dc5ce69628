"""`costmodel/ilp.py`: set partitions solved block by block without HiGHS, to the same
optimum HiGHS finds; everything else, and programs with blocks too large, through HiGHS."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilecraft.costmodel import ilp


@st.composite
def partitions(draw):
    """A fusion-plan-like program: every row has its singleton column, plus groups of
    nearby rows; some programs split into several blocks."""
    n = draw(st.integers(1, 14))
    cols = [[i] for i in range(n)]
    for _ in range(draw(st.integers(0, 16))):
        start = draw(st.integers(0, n - 1))
        size = draw(st.integers(2, 4))
        cols.append(sorted({min(start + k * draw(st.integers(1, 2)), n - 1) for k in range(size)}))
    cost = [draw(st.floats(0.0, 10.0, allow_nan=False)) for _ in cols]
    a = np.zeros((n, len(cols)))
    for j, rows in enumerate(cols):
        a[rows, j] = 1
    return np.array(cost), a


@settings(max_examples=150, deadline=None)
@given(partitions())
def test_exact_blocks_find_highs_optimum(program):
    cost, a = program
    chosen, total = ilp.solve_binary(cost, equal=(a, 1))
    assert np.array_equal(a[:, chosen].sum(axis=1), np.ones(a.shape[0]))  # an exact cover
    _, best = ilp._milp(cost, equal=(a, 1))  # (optimal within HiGHS' gaps: 1e-4 relative, 1e-6 absolute
    scale = float(np.abs(cost).max()) or 1.0  # of the objective scaled to at most 1)
    assert best - 1e-4 * abs(best) - 1e-6 * scale <= total <= best + 1e-9
    assert total == pytest.approx(cost[chosen].sum())


def test_large_blocks_and_long_searches_go_to_highs(monkeypatch):
    cost = np.array([1.0, 1.0, 1.0, 1.5, 0.4, 3.0])
    a = np.array([[1, 0, 0, 1, 0, 1], [0, 1, 0, 1, 1, 1], [0, 0, 1, 0, 1, 1]], dtype=float)
    want = ilp.solve_binary(cost, equal=(a, 1))
    assert want == ([0, 4], 1.4)
    calls = []
    milp = ilp._milp
    monkeypatch.setattr(ilp, "_milp", lambda *x, **k: calls.append(1) or milp(*x, **k))
    for name, value in (("EXACT_COLUMNS", 2), ("EXACT_NODES", 1)):
        with monkeypatch.context() as m:
            m.setattr(ilp, name, value)
            assert ilp.solve_binary(cost, equal=(a, 1)) == want
    assert len(calls) == 2  # (one whole-program call each)


def test_no_exact_cover_is_infeasible():
    a = np.array([[1, 1], [1, 0], [0, 0]], dtype=float)
    with pytest.raises(ilp.InfeasibleError):
        ilp.solve_binary([1.0, 1.0], equal=(a, 1))
    with pytest.raises(ilp.InfeasibleError):
        ilp.solve_binary([1.0, 2.0], equal=(np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), 1))


@pytest.mark.parametrize("n", [150, 350])
def test_a_long_chain_of_overlapping_groups(n, monkeypatch):
    """One block as long as a deep model's chain: solved here (about 2n states) within
    Python's recursion limit where `EXACT_COLUMNS` allows (n = 150: 299 columns), else by
    HiGHS (n = 350)."""
    calls = []
    milp = ilp._milp
    monkeypatch.setattr(ilp, "_milp", lambda *x, **k: calls.append(1) or milp(*x, **k))
    cols = [[i] for i in range(n)] + [[i, i + 1] for i in range(n - 1)]
    a = np.zeros((n, len(cols)))
    for j, rows in enumerate(cols):
        a[rows, j] = 1
    cost = np.array([1.0] * n + [1.5] * (n - 1))  # a pair beats two singles
    chosen, total = ilp.solve_binary(cost, equal=(a, 1))
    assert np.array_equal(a[:, chosen].sum(axis=1), np.ones(n))
    assert total == pytest.approx(1.5 * (n // 2) + (n % 2))
    assert len(calls) == (0 if 2 * n - 1 <= ilp.EXACT_COLUMNS else 1)


def test_highs_objective_scaled_so_its_gaps_mean_what_they_say():
    """Costs of a few microseconds (a small model's plan, in seconds) are the size of HiGHS'
    default absolute gap, 1e-6: unscaled, it stopped at a plan 0.4% above the optimum."""
    cost = np.array([1.0e-6, 1.0e-6, 1.5e-6, 2.0e-6])
    a = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=float)
    assert ilp._milp(cost, equal=(a, 1)) == ([2, 3], pytest.approx(3.5e-6))
