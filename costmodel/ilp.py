"""The one integer-program helper the planners share (fusion partition, precision plan).

On the costmodel floor. A 0/1 program: minimize `cost · x` subject to rows of equalities
and upper bounds, every x binary; solved exactly by HiGHS through `scipy.optimize.milp`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


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
    constraints = []
    if equal is not None:
        constraints.append(LinearConstraint(np.atleast_2d(equal[0]), equal[1], equal[1]))
    if at_most is not None:
        constraints.append(LinearConstraint(np.atleast_2d(at_most[0]), -np.inf, at_most[1]))
    options = {"time_limit": time_limit} if time_limit else {}
    res = milp(cost, constraints=constraints, integrality=np.ones(cost.size), bounds=Bounds(0, 1), options=options)
    if res.x is None:
        raise InfeasibleError(f"integer program: {res.message}")
    return [j for j, x in enumerate(res.x) if x > 0.5], float(res.fun)
