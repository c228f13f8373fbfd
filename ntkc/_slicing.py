"""Slicing examples: one implementation for every caller (the batch and output splits, ntkc.gram).

Along any batch axis, of device arrays (and tracers), ``jax.ShapeDtypeStruct`` and host data
(numpy arrays, memory maps): host data is sliced on the host, so a dataset is never copied to
the device whole; only the slice goes there, when its consumer puts it there.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np


def resized(leaf, axis: int, n: int) -> jax.ShapeDtypeStruct:
    """The shape and dtype of ``leaf`` with ``n`` entries along ``axis``."""
    shape = list(np.shape(leaf))
    shape[axis] = n
    return jax.ShapeDtypeStruct(tuple(shape), leaf.dtype)


def take_leaf(leaf, axis: int, start: int, stop: int):
    """Entries ``start:stop`` of ``leaf`` along ``axis`` (``stop`` clipped to its size)."""
    stop = min(stop, np.shape(leaf)[axis])
    if isinstance(leaf, jax.ShapeDtypeStruct):  # ntkc.compile's abstract inputs
        return resized(leaf, axis, stop - start)
    if isinstance(leaf, np.ndarray):  # a view: a memory map stays on disk until used
        return leaf[(slice(None),) * axis + (slice(start, stop),)]
    return jax.lax.slice_in_dim(leaf, start, stop, axis=axis)


def _per_leaf(tree, axes) -> tuple[list, list, object]:
    leaves, treedef = jax.tree.flatten(tree)
    if axes is None or isinstance(axes, int):
        axes = [axes] * len(leaves)
    return leaves, list(axes), treedef


def take(tree, axes: int | Sequence[int | None], start: int, stop: int):
    """Examples ``start:stop`` of every leaf of ``tree`` along its batch axis.

    Args:
      tree: a pytree of arrays, tracers, ``jax.ShapeDtypeStruct`` or host arrays.
      axes: one batch axis for every leaf, or one per flattened leaf (None: unbatched, kept).
      start, stop: the examples; ``stop`` is clipped to the number of examples.
    """
    leaves, axes, treedef = _per_leaf(tree, axes)
    return jax.tree.unflatten(treedef, [leaf if ax is None else take_leaf(leaf, ax, start, stop)
                                        for leaf, ax in zip(leaves, axes)])


def like(tree, n: int, axis: int = 0):
    """Shapes and dtypes of ``n`` examples of ``tree`` (examples along ``axis`` of every leaf)."""
    return jax.tree.map(lambda leaf: resized(leaf, axis, n), tree)


def padded_block(tree, start: int, size: int):
    """Examples ``start:start + size`` along axis 0, as host arrays; past the end the last
    example is repeated, so that every block has one shape (one compilation)."""

    def pad(leaf):
        piece = np.asarray(take_leaf(leaf, 0, start, start + size))
        return piece[np.minimum(np.arange(size), len(piece) - 1)]

    return jax.tree.map(pad, tree)


def nbytes(tree) -> int:
    """Bytes of a pytree's arrays (device, host or ``jax.ShapeDtypeStruct``)."""
    return sum(int(np.prod(np.shape(l))) * np.dtype(l.dtype).itemsize for l in jax.tree.leaves(tree))
