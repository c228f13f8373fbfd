"""Test grids: every pair of option values instead of every combination.

A wrong kernel that depends on one option, or on how two options meet (a traced axis with
x2=None, a method with vmap_axes=None), shows up in an all-pairs grid; the full product of four
or five options costs several times more compilations (the dominant cost of the suite on CPU)
for interactions of three or more options. ``NTKC_FULL_GRID=1`` gives the full product.
"""

from __future__ import annotations

import itertools
import os

FULL_GRID = os.environ.get("NTKC_FULL_GRID") == "1"


def all_pairs(*options: list) -> list[tuple]:
    """Rows (one value from each option list) in which every two values of two different
    options meet at least once; deterministic (greedy: each row starts from the first pair not
    yet met and fills the other options with the values that meet the most new pairs, the
    least used value of an option first among equals)."""
    options = [list(values) for values in options]
    if FULL_GRID or len(options) < 3:
        return list(itertools.product(*options))
    n = len(options)
    missing = {(i, a, j, b) for i, j in itertools.combinations(range(n), 2)
               for a in range(len(options[i])) for b in range(len(options[j]))}
    rows, used = [], [[0] * len(values) for values in options]

    def pair(k, v, m, w):
        return (k, v, m, w) if k < m else (m, w, k, v)

    while missing:
        i, a, j, b = min(missing)
        row = [None] * n
        row[i], row[j] = a, b
        for k in range(n):
            if row[k] is None:
                row[k] = max(range(len(options[k])), key=lambda v: (sum(
                    pair(k, v, m, row[m]) in missing
                    for m in range(n) if row[m] is not None and m != k), -used[k][v], -v))
        missing -= {(i, row[i], j, row[j]) for i, j in itertools.combinations(range(n), 2)}
        for k, v in enumerate(row):
            used[k][v] += 1
        rows.append(tuple(options[k][v] for k, v in enumerate(row)))
    return rows
