"""Splits under ``memory_limit``: the kernel computed block by block of examples, or chunk by
chunk of outputs.

When no method's estimated working set fits ``memory_limit`` for the whole batch, and
``vmap_axes`` certifies that examples do not interact, the kernel is computed for blocks of
examples (one program per block shape, each within the limit) and the blocks are assembled:
side by side along a free example axis, one after another along a diagonal one, and averaged,
weighted by block size, over a traced one.

When not even one example fits (ResNet-18 with 1000 logits), the outputs are split: the kernel
of ``f`` restricted to equal chunks of its largest non-batch output axis (the cotangents a method
carries scale with the outputs), one program for every chunk (the chunk's start is an array
argument), assembled the same way along that output axis. A free output axis needs the kernel of
every pair of chunks (chunk a of ``f(x1)`` against chunk b of ``f(x2)``: the start differs per
side); a traced or diagonal one only the pairs (a, a). With a method that splits into sides and
pairs (``Method.gram``: structured, jacobian), each chunk's side (its cotangent passes and
factors) is computed once per row of chunks and paired with the columns' sides, instead of both
sides inside every pair's program (:class:`FactoredChunks`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ntkc import _compat
from ntkc._problem import Config, Problem, merge_kwargs
from ntkc.methods import registry


class NoFit(Exception):
    """Raised by the planner when nothing fits ``memory_limit`` for these inputs."""

    def __init__(self, config: Config, why: str):
        super().__init__(why)
        self.config, self.why = config, why


def sided_kwargs(kwargs: dict) -> bool:
    """Whether keyword arguments differ between the sides (an rng key, a pair): a split would
    change them."""
    return any(k == "rng" or (isinstance(v, tuple) and len(v) == 2) for k, v in kwargs.items())


def check_splittable(config: Config, kwargs: dict, why: str, limit: int) -> None:
    """Raises the planner's memory error when the batch cannot be split."""
    from ntkc.passes.path import PathMemoryError

    if config.batching is None:
        raise PathMemoryError(f"memory_limit={limit}: {why}; without vmap_axes the batch is one "
                              "example and cannot be split")
    if sided_kwargs(kwargs):
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


def output_start(start: int):
    return jnp.asarray(start, jnp.int32)


def output_chunk(f, axis: int, size: int):
    """``f`` restricted to ``size`` outputs along ``axis`` of its one output leaf: a function of
    ``(x, start)`` (the start an unbatched array input, different on the two sides of a pair of
    chunks, one program for every chunk)."""

    def chunk(params, x_start, **kwargs):
        x, start = x_start
        return jax.tree.map(lambda y: jax.lax.dynamic_slice_in_dim(y, start, size, axis),
                            f(params, x, **kwargs))

    return chunk


def chunk_vmap_axes(vmap_axes):
    """``vmap_axes`` of :func:`output_chunk`'s function: the start is not batched."""
    if vmap_axes is None:
        return None
    if isinstance(vmap_axes, tuple) and len(vmap_axes) == 3:
        in_axes, out_axes, kwargs_axes = vmap_axes
        return ((in_axes, None), out_axes, kwargs_axes)
    return ((vmap_axes, None), vmap_axes, {})


# The share of ``memory_limit`` that two chunks' sides (their arrays, exactly) may take for
# the factored path; the rest is left to the pair's contraction. Measured on ResNet-18 (224²,
# O=1000, chunks of 125): sides of 3.0 GiB each, the pair-of-sides program 7.2 GiB in all
# (XLA), where the program computing both sides inside it peaks at 2.3 GiB (it frees each
# layer's cotangents and patches once contracted).
SIDES_SHARE = 0.75


class FactoredChunks:
    """Pairs of chunks of outputs from the chunks' sides (``Method.gram``): ``side`` computes a
    chunk's factors and cotangents, ``pair`` the kernel of two sides; each row's side is kept
    while its columns are paired with it. Used when two sides fit in ``SIDES_SHARE`` of
    ``memory_limit``: a side holds every use's cotangents and factors at once, which the
    program of a pair of chunks need not."""

    def __init__(self, chunk_fn, finish):
        self.chunk_fn, self.finish = chunk_fn, finish  # finish: ntkc._api.finish
        self._programs: dict = {}
        self._static: dict = {}  # a side's static part, per pair config (GramSides.side)
        self._fits: dict = {}  # per pair config: whether two sides fit (see SIDES_SHARE)

    def config(self, x1, x2, params, kwargs):
        """``(config, dyn)``: the config of two different chunks and the array keyword arguments
        (the same on both sides: chunks refuse sided ones), or None when its method has no
        sides and pairs."""
        one = (x1, output_start(0))
        config, args = self.chunk_fn.prepare(one, (x1 if x2 is None else x2, output_start(0)),
                                             params, **kwargs)
        method = registry.METHODS.get(config.method)
        if (method is None or method.gram is None or config.block or config.by_param
                or config.read_rng):
            return None
        dyn = args[3]
        if config.memory_limit is not None and not self._sides_fit(config, one, params, dyn):
            return None
        return config, dyn

    def _sides_fit(self, config, one, params, dyn) -> bool:
        """Whether two sides' arrays fit in their share of ``memory_limit`` (once per config:
        it traces a side)."""
        if config not in self._fits:
            side = jax.eval_shape(self._side_fn(config), one, params, dyn)
            side_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(side))
            self._fits[config] = 2 * side_bytes <= SIDES_SHARE * config.memory_limit
        return self._fits[config]

    def _program(self, kind, config, args, fn):
        nested = _compat.is_traced(args)  # inside the user's jit: no options of its own
        key = (kind, config, nested)
        if key not in self._programs:
            options = None if nested else config.jit_options
            self._programs[key] = jax.jit(fn, compiler_options=options)
        return self._programs[key](*args)

    def _side_fn(self, config):
        gram = registry.METHODS[config.method].gram

        def side(x_start, params, dyn):
            kw = merge_kwargs(config.static_kwargs1, dyn)
            arrays, self._static[config] = gram.side(
                Problem(self.chunk_fn.f, x_start, x_start, params, kw, kw, config))
            return arrays

        return side

    def side(self, config, dyn, x, start, params):
        """Chunk ``start`` of ``f(x)``: its side's arrays."""
        return self._program("side", config, ((x, output_start(start)), params, dyn),
                             self._side_fn(config))

    def pair(self, config, side1, side2, params):
        """The kernel of two chunks' sides, as the chunk's kernel function returns it."""
        gram = registry.METHODS[config.method].gram

        def pair(side1, side2, params):
            leaves = gram.pair(config, self._static[config], side1, side2, None)
            return self.finish(leaves, params, config)

        return self._program("pair", config, (side1, side2, params), pair)


def chunkwise(config: Config, chunk_fn, x1, x2, params, kwargs, sides: FactoredChunks = None):
    """The kernel from the kernels of chunks of outputs (``config.chunk``), each a call of
    ``chunk_fn``, the kernel function of one chunk, or a pair of chunks' ``sides``."""
    axis, size = config.chunk
    axes = config.axes[0]
    starts = range(0, axes.shape1[axis], size)
    factored = None if sides is None else sides.config(x1, x2, params, kwargs)
    row = {}  # the current row's side: its start and arrays

    def call(a, b):  # chunk a of f(x1) against chunk b of f(x2)
        if factored is None:
            other = None if x2 is None and a == b else (x1 if x2 is None else x2, output_start(b))
            return chunk_fn((x1, output_start(a)), other, params, **kwargs)
        pair_config, dyn = factored
        if row.get("start") != a:
            row.update(start=a, side=sides.side(pair_config, dyn, x1, a, params))
        column = (row["side"] if x2 is None and a == b
                  else sides.side(pair_config, dyn, x1 if x2 is None else x2, b, params))
        return sides.pair(pair_config, row["side"], column, params)

    if axis in axes.trace:  # a mean over the outputs: the mean of equal chunks' means
        return jax.tree.map(lambda *ks: sum(ks) / len(ks), *[call(s, s) for s in starts])
    if axis in axes.diagonal:
        (p,) = axes.kernel_position(axis)
        return jax.tree.map(lambda *ks: jnp.concatenate(ks, p), *[call(s, s) for s in starts])
    p1, p2 = axes.kernel_position(axis)
    grid = {}
    for i, a in enumerate(starts):
        for j, b in enumerate(starts):
            if x2 is None and j < i:  # Θ(x1, x1) is symmetric: mirror the block (j, i)
                grid[i, j] = jax.tree.map(lambda k: jnp.transpose(k, axes.mirror_permutation()),
                                          grid[j, i])
            else:
                grid[i, j] = call(a, b)
    n = len(starts)
    rows = [jax.tree.map(lambda *ks: jnp.concatenate(ks, p2), *[grid[i, j] for j in range(n)])
            for i in range(n)]
    return jax.tree.map(lambda *ks: jnp.concatenate(ks, p1), *rows)
