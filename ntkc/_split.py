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
sides inside every pair's program, when XLA's memory analysis of those programs fits
``memory_limit`` (:class:`FactoredChunks`); with x2=None a diagonal block's program takes its
row's side once, so that x2's steps that repeat x1's are computed once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ntkc import _compat, _slicing
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


def join(axes, axis: int, grid: dict, n_rows: int, n_cols: int, weights=None):
    """A kernel from its parts along one of its output axes: ``grid[i, j]`` (pytrees) is part
    ``i`` of x1's side against part ``j`` of x2's. A free axis concatenates every ``(i, j)``, a
    diagonal one the ``(i, i)``; a traced one averages the ``(i, i)``, each weighing by its
    share ``weights[i]`` of the axis (equal shares by default)."""
    if axis in axes.free:
        p1, p2 = axes.kernel_position(axis)
        rows = [jax.tree.map(lambda *ks: jnp.concatenate(ks, p2),
                             *[grid[i, j] for j in range(n_cols)]) for i in range(n_rows)]
        return jax.tree.map(lambda *ks: jnp.concatenate(ks, p1), *rows)
    diagonal = [grid[i, i] for i in range(n_rows)]
    if axis in axes.diagonal:
        (p,) = axes.kernel_position(axis)
        return jax.tree.map(lambda *ks: jnp.concatenate(ks, p), *diagonal)
    weights = weights or [1 / n_rows] * n_rows
    return jax.tree.map(lambda *ks: sum(w * k for w, k in zip(weights, ks)), *diagonal)


def assemble(config: Config, grid: dict, rows, cols):
    """The kernel from block kernels ``grid[(i, j)]`` (pytrees like the kernel), joined along
    each output leaf's batch axis (:func:`join`; traced: blocks weigh by their size)."""
    treedef = config.out_treedef
    weights = [(stop - start) / config.batching.size1 for start, stop in rows]
    out = []
    for k, axes in enumerate(config.axes):
        leaf_k = {ij: treedef.flatten_up_to(kernel)[k] for ij, kernel in grid.items()}
        out.append(join(axes, config.batching.outputs[k], leaf_k, len(rows), len(cols), weights))
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


# Where XLA gives no memory analysis: the share of ``memory_limit`` that two chunks' sides
# (their arrays) may take, the rest left to the pair's contraction.
SIDES_SHARE = 0.5


def _program_bytes(compiled) -> int | None:
    """A compiled program's peak as XLA's memory analysis counts it (arguments, outputs and
    temporaries), or None without one."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # a backend without memory analysis
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


class FactoredChunks:
    """Pairs of chunks of outputs from the chunks' sides (``Method.gram``): ``side`` computes a
    chunk's factors and cotangents, ``pair`` the kernel of two sides; each row's side is kept
    while its columns are paired with it (an output axis the kernel keeps: where it is traced or
    diagonal a chunk meets only itself, and each pair stays one program).

    A side holds every use's cotangents and factors at once, which the program of a pair of
    chunks frees as it contracts (ResNet-18, 224², O=1000, chunks of 125: sides of 2.4 GiB, the
    pair-of-sides program 7.2 GiB, the pair program computing both sides inside it 2.3 GiB). So
    under ``memory_limit`` this is used only when XLA's memory analysis of its programs fits
    the limit: the pair of sides, and a side's program while a row's side is kept. Inside the
    user's jit (no program of its own to analyse) each pair then stays one program.
    """

    def __init__(self, chunk_fn, finish):
        self.chunk_fn, self.finish = chunk_fn, finish  # finish: ntkc._api.finish
        self._compiled: dict = {}  # (kind, config, argument shapes) -> compiled program
        self._nested: dict = {}  # (kind, config) -> jitted program, inside the user's jit
        self._static: dict = {}  # a side's static part, per pair config (GramSides.side)
        self._fits: dict = {}  # per pair config: whether its programs fit memory_limit

    def config(self, x1, x2, params, kwargs):
        """``(config, dyn)``: the config of two different chunks and the array keyword arguments
        (the same on both sides: chunks refuse sided ones), or None when its method has no
        sides and pairs or its programs would not fit ``memory_limit``."""
        one, other = (x1, output_start(0)), (x1 if x2 is None else x2, output_start(0))
        config, args = self.chunk_fn.prepare(one, other, params, **kwargs)
        method = registry.METHODS.get(config.method)
        if (method is None or method.gram is None or config.block or config.by_param
                or config.read_rng):
            return None
        dyn = args[3]
        if config.memory_limit is not None and (_compat.is_traced((x1, x2, params, dyn))
                                                or not self._fit(config, one, other, params,
                                                                 dyn)):
            return None
        return config, dyn

    def _fit(self, config, one, other, params, dyn) -> bool:
        """Whether the side and pair programs fit ``memory_limit``: a row's side kept while a
        column's side is computed, and the pair of them (once per config)."""
        if config not in self._fits:
            row_args, column_args = _abstract((one, params, dyn)), _abstract((other, params, dyn))
            row = jax.eval_shape(self._side_fn(config), *row_args)
            column = jax.eval_shape(self._side_fn(config), *column_args)
            peaks = (_program_bytes(self._program("side", config, column_args)),
                     _program_bytes(self._program("pair", config, (row, column, row_args[1]))))
            if None in peaks:
                fits = _slicing.nbytes(row) + _slicing.nbytes(column) <= SIDES_SHARE * config.memory_limit
            else:
                fits = max(_slicing.nbytes(row) + peaks[0], peaks[1]) <= config.memory_limit
            self._fits[config] = fits
        return self._fits[config]

    def _program(self, kind, config, abstract_args):
        """The compiled side or pair program of ``config`` for these argument shapes (with the
        config's XLA options)."""
        leaves, treedef = jax.tree.flatten(abstract_args)
        key = (kind, config, treedef, tuple(leaves))
        if key not in self._compiled:
            fn = self._fn(kind, config)
            self._compiled[key] = jax.jit(fn, compiler_options=config.jit_options).lower(
                *abstract_args).compile()
        return self._compiled[key]

    def _fn(self, kind, config):
        return {"side": self._side_fn, "pair": self._pair_fn, "self": self._self_fn}[kind](config)

    def _run(self, kind, config, args):
        if _compat.is_traced(args):  # inside the user's jit: part of its program
            key = (kind, config)
            if key not in self._nested:
                self._nested[key] = jax.jit(self._fn(kind, config))
            return self._nested[key](*args)
        return self._program(kind, config, _abstract(args))(*args)

    def _side_fn(self, config):
        gram = registry.METHODS[config.method].gram

        def side(x_start, params, dyn):
            kw = merge_kwargs(config.static_kwargs1, dyn)
            arrays, self._static[config] = gram.side(
                Problem(self.chunk_fn.f, x_start, x_start, params, kw, kw, config))
            return arrays

        return side

    def _pair_fn(self, config):
        gram = registry.METHODS[config.method].gram

        def pair(side1, side2, params):
            leaves = gram.pair(config, self._static[config], side1, side2, None)
            return self.finish(leaves, params, config)

        return pair

    def _self_fn(self, config):
        """A chunk's side paired with itself (x2=None): one argument, so that XLA computes the
        steps that x2's operands repeat once (the pair program, given the side twice, cannot
        know they are the same arrays). It holds less than the pair program that :meth:`_fit`
        checks (one side as its argument, not two; ResNet-18, 224², O=1000, chunks of 125:
        3.9 against 7.2 GiB, 267 against 422 GFLOP in XLA's counts)."""
        pair = self._pair_fn(config)
        return lambda side, params: pair(side, side, params)

    def side(self, config, dyn, x, start, params):
        """Chunk ``start`` of ``f(x)``: its side's arrays."""
        return self._run("side", config, ((x, output_start(start)), params, dyn))

    def pair(self, config, side1, side2, params):
        """The kernel of two chunks' sides, as the chunk's kernel function returns it."""
        return self._run("pair", config, (side1, side2, params))

    def pair_self(self, config, side, params):
        """The kernel of a chunk's side against itself (a diagonal block with x2=None)."""
        return self._run("self", config, (side, params))


def chunkwise(config: Config, chunk_fn, x1, x2, params, kwargs, sides: FactoredChunks = None):
    """The kernel from the kernels of chunks of outputs (``config.chunk``), each a call of
    ``chunk_fn``, the kernel function of one chunk, or a pair of chunks' ``sides``."""
    axis, size = config.chunk
    axes = config.axes[0]
    starts = range(0, axes.shape1[axis], size)
    every_pair = axis in axes.free
    # traced or diagonal: each chunk meets only itself, so no side would be reused, and one
    # program per pair frees as it contracts (and with x2=None, computes x1's steps once)
    factored = None if sides is None or not every_pair else sides.config(x1, x2, params, kwargs)
    row = {}  # the current row's side: its start and arrays

    def call(a, b):  # chunk a of f(x1) against chunk b of f(x2)
        if factored is None:
            other = None if x2 is None and a == b else (x1 if x2 is None else x2, output_start(b))
            return chunk_fn((x1, output_start(a)), other, params, **kwargs)
        pair_config, dyn = factored
        if row.get("start") != a:
            row.update(start=a, side=sides.side(pair_config, dyn, x1, a, params))
        if x2 is None and a == b:
            return sides.pair_self(pair_config, row["side"], params)
        column = sides.side(pair_config, dyn, x1 if x2 is None else x2, b, params)
        return sides.pair(pair_config, row["side"], column, params)

    n = len(starts)
    if not every_pair:  # traced or diagonal: only the pairs (a, a)
        return join(axes, axis, {(i, i): call(a, a) for i, a in enumerate(starts)}, n, n)
    grid = {}
    for i, a in enumerate(starts):
        for j, b in enumerate(starts):
            if x2 is None and j < i:  # Θ(x1, x1) is symmetric: mirror the block (j, i)
                grid[i, j] = jax.tree.map(lambda k: jnp.transpose(k, axes.mirror_permutation()),
                                          grid[j, i])
            else:
                grid[i, j] = call(a, b)
    return join(axes, axis, grid, n, n)
