"""Replacing array leaves of a pytree, and restricting a function to some of its parameter
leaves: one implementation for the methods, the request's per-example functions and the
reference."""

from __future__ import annotations

from typing import Callable, Sequence

import jax


def replace_leaves(leaves: Sequence, positions: Sequence[int], values) -> list:
    """A copy of the flat ``leaves`` with ``leaves[positions[k]]`` replaced by ``values[k]``."""
    full = list(leaves)
    for i, value in zip(positions, values):
        full[i] = value
    return full


def restrict(f: Callable, params, leaves: Sequence[int]) -> tuple[Callable, list]:
    """``f(params, *args, **kwargs)`` as a function of the parameter leaves ``leaves`` alone.

    Returns:
      ``(g, group)``: ``g(group, *args, **kwargs)`` is ``f`` with those leaves (in
      ``jax.tree.leaves`` order) taken from ``group`` and the others fixed to ``params``';
      ``group`` is their values in ``params``. The kernel of ``g`` is the part of ``f``'s
      kernel that those leaves contribute.
    """
    all_leaves, treedef = jax.tree.flatten(params)

    def g(group, *args, **kwargs):
        return f(jax.tree.unflatten(treedef, replace_leaves(all_leaves, leaves, group)),
                 *args, **kwargs)

    return g, [all_leaves[i] for i in leaves]
