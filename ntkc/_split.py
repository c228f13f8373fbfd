"""Batch splits under ``memory_limit``: the kernel computed block by block of examples.

When no method's estimated working set fits ``memory_limit`` for the whole batch, and
``vmap_axes`` certifies that examples do not interact, the kernel is computed for blocks of
examples (one program per block shape, each within the limit) and the blocks are assembled:
side by side along a free example axis, one after another along a diagonal one, and averaged,
weighted by block size, over a traced one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ntkc._problem import Config


class NoFit(Exception):
    """Raised by the planner when nothing fits ``memory_limit`` for these inputs."""

    def __init__(self, config: Config, why: str):
        super().__init__(why)
        self.config, self.why = config, why


def take(x, kwargs: dict, axes, start: int, stop: int):
    """Examples ``start:stop`` of ``(x, kwargs)`` along their batch ``axes`` (None: unbatched)."""
    leaves, treedef = jax.tree.flatten((x, kwargs))
    return jax.tree.unflatten(treedef, [leaf if ax is None else _slice(leaf, ax, start, stop)
                                        for leaf, ax in zip(leaves, axes)])


def _slice(leaf, axis, start, stop):
    stop = min(stop, jnp.shape(leaf)[axis])
    if isinstance(leaf, jax.ShapeDtypeStruct):  # ntkc.compile's abstract inputs
        shape = list(leaf.shape)
        shape[axis] = stop - start
        return jax.ShapeDtypeStruct(tuple(shape), leaf.dtype)
    return jax.lax.slice_in_dim(jnp.asarray(leaf), start, stop, axis=axis)


def check_splittable(config: Config, kwargs: dict, why: str, limit: int) -> None:
    """Raises the planner's memory error when the batch cannot be split."""
    from ntkc.passes.path import PathMemoryError

    if config.batching is None:
        raise PathMemoryError(f"memory_limit={limit}: {why}; without vmap_axes the batch is one "
                              "example and cannot be split")
    if any(k == "rng" or (isinstance(v, tuple) and len(v) == 2) for k, v in kwargs.items()):
        raise PathMemoryError(f"memory_limit={limit}: {why}; a batch split would change the "
                              "rng keys or per-side keyword arguments, so it is not done")


def blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def assemble(config: Config, grid: dict, rows, cols):
    """The kernel from block kernels ``grid[(i, j)]`` (pytrees like the kernel).

    Free example axes take every ``(i, j)``; diagonal and traced ones only ``(i, i)``.
    """
    treedef = config.out_treedef
    n = config.batching.size1
    out = []
    for k, axes in enumerate(config.axes):
        b = config.batching.outputs[k]
        pick = lambda kernel: treedef.flatten_up_to(kernel)[k]
        if b in axes.free:
            p1, p2 = axes.kernel_position(b)
            rows_k = [jax.tree.map(lambda *bs: jnp.concatenate(bs, p2),
                                   *[pick(grid[(i, j)]) for j in range(len(cols))])
                      for i in range(len(rows))]
            out.append(jax.tree.map(lambda *bs: jnp.concatenate(bs, p1), *rows_k))
        elif b in axes.diagonal:
            (p,) = axes.kernel_position(b)
            out.append(jax.tree.map(lambda *bs: jnp.concatenate(bs, p),
                                    *[pick(grid[(i, i)]) for i in range(len(rows))]))
        else:  # traced: a mean over the examples, so blocks weigh by their size
            weights = [(stop - start) / n for start, stop in rows]
            out.append(jax.tree.map(lambda *bs: sum(w * x for w, x in zip(weights, bs)),
                                    *[pick(grid[(i, i)]) for i in range(len(rows))]))
    return jax.tree.unflatten(treedef, out)
