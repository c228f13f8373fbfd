"""Side-local contraction steps, computed once per block of examples instead of once per tile.

A term's contraction path (``ntkc.passes.path``) often begins by contracting one side's operands
alone: for a convolution, the cotangent with the patches of the same example, a per-example
weight gradient. ``ntkc.gram`` pairs every block with many others, so such steps are worth
computing once per block. Given a :class:`Hoist` (``pipeline.combine(..., hoist=)``), every
term contraction runs its path step by step through it: a step whose operands all come from one
side (``note["sides"]``) is *local*. Collecting (on a block paired with itself, in the block's
side program) records the local results of each side; using (in the tile program) takes them
from the two blocks' records in the same order and computes only the rest. Both programs see the
same operand shapes, hence the same paths.
"""

from __future__ import annotations

import jax.numpy as jnp

from ntkc.passes import pairwise


class Hoist:
    """Runs term contractions step by step, collecting or reusing their side-local steps.

    Args:
      given: None to collect; else ``{1: results, 2: results}``, the local results of the row
        block (as side 1) and of the column block (as side 2), as collected.
    """

    def __init__(self, given: dict | None = None):
        self.collected: dict = {1: [], 2: []}
        self._given = None if given is None else {s: iter(r) for s, r in given.items()}

    def __call__(self, ops, out, path, sides) -> jnp.ndarray:
        arrays, labels, tags = list(ops[0::2]), [list(l) for l in ops[1::2]], list(sides)
        sizes = {l: n for a, ls in zip(arrays, labels) for l, n in zip(ls, a.shape)}
        for step in path:
            picked = [(arrays.pop(i), labels.pop(i), tags.pop(i))
                      for i in sorted(step, reverse=True)]
            left = {l for ls in labels for l in ls} | set(out)
            kept = list(dict.fromkeys(l for _, ls, _ in picked for l in ls if l in left))
            side = picked[0][2] if len({t for _, _, t in picked}) == 1 else 0
            if side in (1, 2) and self._given is not None:
                result = next(self._given[side])
                if result.shape != tuple(sizes[l] for l in kept):  # the paths diverged: a bug
                    raise RuntimeError(f"hoisted step of shape {result.shape} does not match "
                                       f"its labels {kept}")
            else:
                result = (pairwise.contract_pair(picked[1][0], picked[1][1], picked[0][0],
                                                 picked[0][1], kept) if len(picked) == 2 else
                          jnp.einsum(*[x for a, ls, _ in picked for x in (a, ls)], kept))
                if side in (1, 2):
                    self.collected[side].append(result)
            arrays.append(result)
            labels.append(kept)
            tags.append(side if side in (1, 2) else 0)
        (result,), (have,) = arrays, labels
        return result if have == list(out) else jnp.einsum(result, have, list(out))

    def check_used(self) -> None:
        """Every given result was consumed (else the two programs' paths differ)."""
        if self._given is not None and any(next(r, None) is not None for r in self._given.values()):
            raise RuntimeError("hoisted steps left over: the side and tile paths differ")
