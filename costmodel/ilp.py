"""The one integer-program helper the planners share (fusion partition, precision plan).

On the costmodel floor. A 0/1 program: minimize `cost · x` subject to rows of equalities
and upper bounds, every x binary; solved exactly by HiGHS through `scipy.optimize.milp`.

A set partition (every row `= 1` over 0/1 columns, nothing else: the fusion plan's) splits
into independent blocks of rows that share columns, each usually a few ops and the groups
over them; blocks of up to `EXACT_COLUMNS` columns are solved exactly by dynamic programming
over their rows in order; a program with a larger block (or one whose search passes
`EXACT_NODES` states) goes to HiGHS whole. A compile that needs no solver does not
import scipy.optimize (0.23-0.44 s: docs/measurements.md, a process's first compile).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Blocks with at most this many columns are solved here, up to this many states each;
# a program with a larger block, or one that takes more states, goes to HiGHS.
EXACT_COLUMNS = 400  # (and so rows: the search recurses once a row, under Python's limit of 1000)
EXACT_NODES = 5000


class _TooLarge(Exception):
    pass


class InfeasibleError(RuntimeError):
    pass


def solve_binary(
    cost: Sequence[float],
    *,
    equal: tuple[np.ndarray, Sequence[float] | float] | None = None,
    at_most: tuple[np.ndarray, Sequence[float] | float] | None = None,
    time_limit: float | None = None,
) -> tuple[list[int], float]:
    """The chosen columns (x = 1) and the objective. `equal = (A, b)`: A x = b;
    `at_most = (A, b)`: A x ≤ b. Raises `InfeasibleError` when no 0/1 point satisfies them
    (or, with `time_limit` seconds, none was found in time; a feasible incumbent is kept)."""
    cost = np.asarray(cost, dtype=float)
    if cost.size == 0:
        return [], 0.0
    if at_most is None and equal is not None:
        a = np.atleast_2d(equal[0])
        if np.all(np.asarray(equal[1]) == 1) and np.isin(a, (0, 1)).all():
            return _set_partition(cost, a, time_limit)
    return _milp(cost, equal=equal, at_most=at_most, time_limit=time_limit)


def _milp(cost, *, equal=None, at_most=None, time_limit=None) -> tuple[list[int], float]:
    from scipy.optimize import Bounds, LinearConstraint, milp

    cost = np.asarray(cost, dtype=float)
    constraints = []
    if equal is not None:
        constraints.append(LinearConstraint(np.atleast_2d(equal[0]), equal[1], equal[1]))
    if at_most is not None:
        constraints.append(LinearConstraint(np.atleast_2d(at_most[0]), -np.inf, at_most[1]))
    options = {"time_limit": time_limit} if time_limit else {}
    # Costs in seconds are ~1e-6 for a small model, the size of HiGHS' default absolute gap:
    # it stopped at the first incumbent near there (a layer norm's plan 2.3994e-6 s against
    # the optimum 2.3892e-6). Scaled to at most 1, the gaps mean what they say.
    scale = float(np.abs(cost).max()) or 1.0
    res = milp(
        cost / scale, constraints=constraints, integrality=np.ones(cost.size), bounds=Bounds(0, 1), options=options
    )
    if res.x is None:
        raise InfeasibleError(f"integer program: {res.message}")
    chosen = [j for j, x in enumerate(res.x) if x > 0.5]
    return chosen, float(cost[chosen].sum())


def _set_partition(cost: np.ndarray, a: np.ndarray, time_limit: float | None) -> tuple[list[int], float]:
    """min cost · x with A x = 1 (A 0/1): block by block, exactly."""
    rows_of = [np.flatnonzero(a[:, j]).tolist() for j in range(a.shape[1])]
    if any(not a[i].any() for i in range(a.shape[0])):
        raise InfeasibleError("integer program: a row no column covers")
    # blocks: rows joined by the columns that cover them together (union-find)
    parent = list(range(a.shape[0]))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for rows in rows_of:
        for r in rows[1:]:
            parent[find(r)] = find(rows[0])
    blocks: dict[int, list[int]] = {}
    for j, rows in enumerate(rows_of):
        if rows:  # (an empty column only adds its cost: never chosen when it costs ≥ 0)
            blocks.setdefault(find(rows[0]), []).append(j)

    def whole():  # (one HiGHS call for the whole program)
        return _milp(cost, equal=(a, 1), time_limit=time_limit)

    if any(len(cols) > EXACT_COLUMNS for cols in blocks.values()):
        return whole()
    chosen: list[int] = [j for j, rows in enumerate(rows_of) if not rows and cost[j] < 0]
    for cols in blocks.values():
        picked = _exact_cover(cols, rows_of, cost)
        if picked is None:  # (a search too long: HiGHS, once, for the whole program)
            return whole()
        chosen += picked
    chosen.sort()
    return chosen, float(cost[chosen].sum())


def _exact_cover(cols: list[int], rows_of: list[list[int]], cost: np.ndarray) -> list[int] | None:
    """The cheapest set of `cols` covering each of their rows exactly once, by dynamic
    programming over the rows in order: the state is the next uncovered row and which rows
    after it the columns chosen so far already cover (a few, where groups span nearby ops:
    a chain of n ops has about 2n states). None past `EXACT_NODES` states (HiGHS then
    solves the program)."""
    rows = sorted({r for j in cols for r in rows_of[j]})
    by_row: dict[int, list[int]] = {r: [] for r in rows}
    for j in sorted(cols, key=lambda j: cost[j]):
        by_row[min(rows_of[j])].append(j)  # (a column is chosen at its lowest row)
    n = len(rows)
    memo: dict[tuple[int, frozenset], tuple[float, int | None]] = {}
    states = [0]

    def settle(i: int, ahead: frozenset) -> tuple[int, frozenset]:
        while i < n and rows[i] in ahead:  # rows the chosen columns covered: passed
            ahead = ahead - {rows[i]}
            i += 1
        return i, ahead

    def best(i: int, ahead: frozenset) -> float:
        i, ahead = settle(i, ahead)
        if i == n:
            return 0.0
        if (i, ahead) in memo:
            return memo[i, ahead][0]
        states[0] += 1
        if states[0] > EXACT_NODES:
            raise _TooLarge
        value, choice = np.inf, None
        for j in by_row[rows[i]]:
            members = rows_of[j]
            if ahead.isdisjoint(members):
                v = float(cost[j]) + best(i + 1, ahead.union(members[1:]))  # (members[0] is row i)
                if v < value:
                    value, choice = v, j
        memo[i, ahead] = (value, choice)
        return value

    try:
        if not np.isfinite(best(0, frozenset())):
            raise InfeasibleError("integer program: no exact cover of the rows")
    except (_TooLarge, RecursionError):
        return None
    picked, i, ahead = [], 0, frozenset()
    while True:
        i, ahead = settle(i, ahead)
        if i == n:
            return picked
        j = memo[i, ahead][1]
        picked.append(j)
        ahead = ahead.union(rows_of[j][1:])
        i += 1
