"""Gram matrices over a dataset: tiled, factors reused, symmetric when X2 is None, resumable,
spread over devices.

The kernel of ``X1`` against ``X2`` is computed tile by tile (``batch_size`` examples a side per
device), so that memory stays bounded whatever N; when ``X2`` is None only the tiles on and above
the diagonal are computed and the rest is mirrored. With ``out="kernel.npy"`` the kernel is written
to a memory-mapped ``.npy`` file and the finished tiles are recorded beside it, so that an
interrupted run resumes where it stopped.

Factor reuse: the structured and jacobian methods split into a per-example *side* (structured:
each use's factors and output cotangents; jacobian: the per-example Jacobians), computed once per
block of examples, and a *pair* function contracting two sides into a tile (structured: also
the contraction steps on one side's operands alone, see ``ntkc.passes.hoist``). Sides live in a
least-recently-used cache bounded in bytes, so a block's side is computed once when all fit, and
otherwise once per row plus once per cache miss as a column. Devices: a block holds
``batch_size`` examples per device, sharded over a 1-D mesh (``jax.shard_map``); each device
computes its examples' sides and its rows of the tile against the whole column block.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import math
import os
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ntkc import _slicing
from ntkc._api import KernelFunction
from ntkc._args import check_bytes
from ntkc._compat import Literal
from ntkc._problem import Problem
from ntkc.gram_store import FORMAT, VERSION, GramStore, is_store, open_gram
from ntkc.methods import registry
from ntkc.passes.hoist import Hoist

_AXIS = "examples"  # the mesh axis the example axis is sharded over
DEFAULT_CACHE_BYTES = 2 * 2**30


def _num_examples(x, name) -> int:
    sizes = {np.shape(l)[0] for l in jax.tree.leaves(x) if np.ndim(l) > 0}
    if len(sizes) != 1:
        raise ValueError(f"{name}: every leaf needs the same number of examples on axis 0, "
                         f"got sizes {sorted(sizes)}")
    size = sizes.pop()
    if size == 0:
        raise ValueError(f"{name} holds no examples (its axis 0 has size 0)")
    return size


def _hash_arrays(*trees) -> str:
    h = hashlib.sha256()
    for tree in trees:
        for leaf in jax.tree.leaves(tree):
            a = np.asarray(leaf)
            h.update(repr((a.shape, str(a.dtype))).encode())
            if a.ndim == 0 or a.nbytes <= 2**26:
                h.update(np.ascontiguousarray(a).tobytes())
            else:  # ~64 MiB at a time (the same hash): a memory-mapped dataset is never copied
                step = max(1, 2**26 // (a.nbytes // len(a)))
                for k in range(0, len(a), step):
                    h.update(np.ascontiguousarray(a[k:k + step]).tobytes())
    return h.hexdigest()


def _program(f, params, x) -> tuple[str, list]:
    """f's traced program on one example, as text (object addresses removed: they change from
    run to run), and the arrays it closes over."""
    one = _slicing.like(x, 1)
    closed = jax.make_jaxpr(lambda p, x: f(p, x))(params, one)
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(closed.jaxpr)), closed.consts


def _fingerprints(program, consts, params, x1, x2, options) -> dict[str, str]:
    """Hashes of everything the kernel depends on, by what it is, so that a file written for
    another function, params, data or options is refused with what differs."""
    return {
        "function": hashlib.sha256(program.encode()).hexdigest()[:32] + _hash_arrays(consts)[:32],
        "params": _hash_arrays(params),
        "data": _hash_arrays(x1, x2),
        "options": hashlib.sha256(
            repr(sorted((k, repr(v)) for k, v in options.items())).encode()).hexdigest(),
    }


def _first_difference(old: str, new: str) -> str:
    for k, (a, b) in enumerate(zip(old.splitlines(), new.splitlines())):
        if a != b:
            return f"; its traced program first differs at line {k + 1}: {a.strip()!r} then, " \
                   f"{b.strip()!r} now"
    return ""


def _check_resumable(out, meta, fingerprints, program, shape,
                     remedy="remove it (and its .progress.json)") -> None:
    """Refuses a file written for another function, params, data, options or shape."""
    if "fingerprints" not in meta:
        raise ValueError(f"{out} was written by an older ntkc, without the fingerprint of the "
                         f"function; {remedy} or pick another out")
    differ = [k for k, v in fingerprints.items() if meta["fingerprints"].get(k) != v]
    if tuple(meta.get("shape", ())) != shape and not differ:
        differ = ["shape"]
    if differ:
        detail = _first_difference(meta.get("program", ""), program) if "function" in differ else ""
        if "options" in differ:
            detail += " (options include batch_size and the number of devices)"
        raise ValueError(f"{out} was written for another {' and '.join(differ)}{detail}; "
                         f"{remedy} or pick another out")


def _choose_batch_size(kernel_fn, params, x1, n, memory_limit) -> int:
    """The largest power-of-two block whose tile fits ``memory_limit`` whole: the planner's
    working-set estimate for two distinct blocks, with the method the tiles will run."""
    if memory_limit is None:
        return min(n, 64)
    size = 1
    while size * 2 <= n:
        block = _slicing.take(x1, 0, 0, size * 2)
        try:
            config, _ = kernel_fn.prepare(block, jax.tree.map(jnp.copy, block), params)
        except ValueError:  # PathMemoryError: not even one example fits
            break
        if config.block is not None or config.chunk is not None:  # the planner would split
            # this tile: too large
            break
        size *= 2
    return size


class _SideCache:
    """Sides by key, at most ``budget`` bytes (of all devices together), least recently used
    evicted first; a side larger than the budget is not kept."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self._items: collections.OrderedDict = collections.OrderedDict()

    def get(self, key, compute: Callable):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        value = compute()
        size = _slicing.nbytes(value)
        if size <= self.budget:
            self._items[key] = (value, size)
            self.used += size
            while self.used > self.budget:  # never the new entry: it alone fits
                _, (_, freed) = self._items.popitem(last=False)
                self.used -= freed
        return value


def _put(tree, sharding):
    """Host arrays onto the mesh (``make_array_from_callback`` also works under jax.distributed)."""
    def put(leaf):
        a = np.asarray(leaf)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(put, tree)


def _host(tile):
    """A replicated (or single-device) array on the host."""
    return np.asarray(tile.addressable_data(0))


class _Factored:
    """The kernel split into ``side(block)`` (per example) and ``pair(side1, side2)`` (per tile).

    A method with Gram side and pair functions (``Method.gram``: structured, jacobian) does its
    per-example work once per block, reused across tiles; for the others (ntvp, per-leaf mixes)
    the side is the block itself and ``pair`` calls the whole kernel function on the two blocks.
    With several devices both are ``shard_map``-ped over the example axis of the rows.
    """

    def __init__(self, kernel_fn: KernelFunction, params, like1, mesh: Mesh, hoist: bool):
        self.kernel_fn, self.f, self.mesh = kernel_fn, kernel_fn.f, mesh
        self.like1 = like1  # X1: shapes and dtypes of the rows
        # "auto" or a pytree of methods here means no single method: the kernel per tile
        method = kernel_fn.method
        single = registry.METHODS.get(method) if isinstance(method, str) else None
        self.gram = single.gram if single is not None else None
        self.factored = self.gram is not None
        # side-local contraction steps computed in the side program (passes/hoist); only when
        # every tile has the shapes of a block paired with itself (the same paths)
        self.hoist = hoist and self.factored and self.gram.hoists
        self.params = _put(params, NamedSharding(mesh, P()))
        self._sides: dict = {}
        self._pairs: dict = {}
        self._static = None  # a side's static part, the same for every block (GramSides.side)
        self._raw_shapes = None  # with hoisting: the shapes of a side's arrays

    def _config(self, n1, n2=None, column_like=None):
        x2 = None if n2 is None else _slicing.like(column_like, n2)
        return self.kernel_fn.prepare(_slicing.like(self.like1, n1), x2, self.params)[0]

    # Per device: one block of examples (side), or a row block against a column block (pair).

    def _side_local(self, config, params, block, keep=None):
        """``(arrays, hoisted)``: a side's arrays, and with hoisting its local steps' results."""
        prob = Problem(self.f, block, block, params, {}, {}, config)
        raw, self._static = self.gram.side(prob)
        if not self.hoist:
            return raw, None
        n = _num_examples(block, "block")
        tile = self._config(n, n, self.like1)  # outside: resolving it may trace other programs
        hoist = Hoist()  # the block against itself; only the local steps are kept
        # two lists, as the tile program gets: the same one would make it one side, whose
        # orders may differ (see methods/structured.gram_pair) from the tiles' it collects for
        self.gram.pair(tile, self._static, raw, list(raw), hoist)
        if keep is not None:  # arrays that only hoisted steps read are not kept (see _keep)
            raw = [a if k else None for a, k in zip(raw, keep)]
        return raw, (hoist.collected[1], hoist.collected[2])

    def _arrays(self, s) -> list:
        """A side's arrays; a dropped array becomes zeros nothing reads."""
        return s[0] if self._raw_shapes is None else [
            jnp.zeros(like.shape, like.dtype) if a is None else a
            for a, like in zip(s[0], self._raw_shapes)]

    def _pair_local(self, config, params, s1, s2) -> list:
        if not self.factored:
            out = self.kernel_fn(s1, s2, params)
        else:
            hoist = Hoist({1: s1[1][0], 2: s2[1][1]}) if self.hoist else None
            out = self.gram.pair(config, self._static, self._arrays(s1), self._arrays(s2),
                                 hoist)[0]
            if hoist is not None:
                hoist.check_used()
        return jax.tree.leaves(out)  # one tile, or one per params leaf (by_param)

    def _keep(self, config, n, block) -> list[bool]:
        """Which of a side's factor and cotangent arrays the tile program reads (as a row or as
        a column); the rest feed hoisted steps only and need not be kept (nor cached)."""
        local = _slicing.like(block, n)
        shapes = jax.eval_shape(functools.partial(self._side_local, config), self.params, local)
        self._raw_shapes = shapes[0]
        pair = functools.partial(self._pair_local, self._config(n, n, self.like1))
        live = _live_inputs(jax.make_jaxpr(pair)(self.params, shapes, shapes).jaxpr)
        n_params = len(jax.tree.leaves(self.params))
        n_side, n_raw = len(jax.tree.leaves(shapes)), len(shapes[0])
        rows = live[n_params:n_params + n_raw]
        columns = live[n_params + n_side:n_params + n_side + n_raw]
        return [r or c for r, c in zip(rows, columns)]

    def side(self, block):
        """The side of ``block`` (examples sharded over the mesh), computed on the devices."""
        if not self.factored:
            return block
        n = _num_examples(block, "block") // self.mesh.size
        fn = self._sides.get(n)
        if fn is None:
            config = self._config(n)
            keep = self._keep(config, n, block) if self.hoist else None
            local = functools.partial(self._side_local, config, keep=keep)
            if self.mesh.size > 1:
                local = jax.shard_map(local, mesh=self.mesh, in_specs=(P(), P(_AXIS)),
                                      out_specs=P(_AXIS), check_vma=False)
            fn = self._sides[n] = jax.jit(local, compiler_options=config.jit_options)
        return fn(self.params, block)

    def pair(self, side1, n1, side2, n2, column_like) -> list:
        """Tiles (host arrays) of a row block's side (``n1`` examples) against a column block's."""
        d = self.mesh.size
        key = (n1, n2, column_like is self.like1)
        fn = self._pairs.get(key)
        if fn is None:
            config = self._config(n1 // d, n2 // d, column_like)
            local = functools.partial(self._pair_local, config)
            if d > 1:
                fn = jax.jit(jax.shard_map(functools.partial(_strip, local, d), mesh=self.mesh,
                                           in_specs=(P(), P(_AXIS), P()), out_specs=P(_AXIS),
                                           check_vma=False),
                             out_shardings=NamedSharding(self.mesh, P()),
                             compiler_options=config.jit_options)
            else:
                fn = jax.jit(local, compiler_options=config.jit_options)
            self._pairs[key] = fn
        return [_host(t) for t in fn(self.params, side1, side2)]


def _strip(pair, d, params, rows, columns):
    """One device's rows against the whole (replicated) column block, ``d`` column chunks in
    sequence (``lax.map``) so that each step is one ``batch_size`` x ``batch_size`` tile."""
    chunks = jax.tree.map(lambda a: a.reshape((d, a.shape[0] // d) + a.shape[1:]), columns)
    tiles = jax.lax.map(lambda c: pair(params, rows, c), chunks)  # each (d, n1, n2/d, ...)
    return [jnp.moveaxis(t, 0, 1).reshape((t.shape[1], d * t.shape[2]) + t.shape[3:])
            for t in tiles]


def _live_inputs(jaxpr) -> list[bool]:
    """Per input variable of ``jaxpr``: whether an output depends on it (backward liveness)."""
    live = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in live for v in eqn.outvars):
            live.update(v for v in eqn.invars if not isinstance(v, Literal))
    return [v in live for v in jaxpr.invars]


def _tile_order(tiles):
    """Row by row, columns in alternating directions (serpentine): a row starts with the column
    blocks the previous row used last, which the cache most likely still holds."""
    rows: dict = {}
    for i, j in tiles:
        rows.setdefault(i, []).append(j)
    ordered = []
    for r, i in enumerate(sorted(rows)):
        ordered += [(i, j) for j in sorted(rows[i], reverse=r % 2 == 1)]
    return ordered


def _single_method(requested, config) -> str | None:
    """The method to factor: the one asked for, or the one ``"auto"`` chose on a tile; None when
    that is not one method (a per-leaf mix, or a split into smaller blocks): then per tile."""
    auto = isinstance(requested, str) and requested == registry.AUTO
    method = config.method if auto else requested
    single = isinstance(method, str) and method in registry.per_leaf_names()
    return method if single else None


def gram(f: Callable, params, X1, X2=None, *, batch_size: int | None = None,
         memory_limit: int | None = None, out: str | os.PathLike | None = None,
         devices: Sequence | None = None, cache_bytes: int | None = None,
         progress: bool = True, **ntk_options):
    """The NTK Gram matrix of a dataset, tile by tile, each block's factors computed once.

    Methods with Gram side and pair functions (``"structured"``, ``"jacobian"``) compute each
    block's per-example side (factors and cotangents, or Jacobians) once and contract pairs of
    sides per tile; ``"ntvp"`` has no per-example part to reuse and calls the kernel per tile.
    ``"auto"`` is resolved once, on one tile; when it picks no single method (a per-leaf mix of
    methods, or smaller blocks under ``memory_limit``) the kernel function is called per tile.

    Args:
      f: ``f(params, x)``; examples along axis 0 of every leaf of ``X1``/``X2`` and of the
        outputs (``vmap_axes`` defaults to 0: examples must not interact).
      params: parameters.
      X1, X2: the datasets; ``X2=None`` computes the symmetric ``Θ(X1, X1)`` from the tiles on
        and above the diagonal only.
      batch_size: examples per block a side and device; default: chosen from ``memory_limit``
        (the largest power of two whose tile's estimated working set fits whole), else 64 (at
        most N). Any N works, not only
        multiples: the last block is padded with copies of its last example, so that the side
        and pair programs compile once.
      memory_limit: bytes of one tile's working set as the planner estimates it (see
        :func:`ntkc.ntk_fn`); the side cache is bounded separately by ``cache_bytes``.
      out: None (return an array); a ``.npy`` path, written tile by tile, the finished tiles
        recorded in ``<out>.progress.json``; or any other path: a directory, the tile store of
        :mod:`ntkc.gram_store` (one ``.npy`` per tile and a manifest; read with
        :func:`ntkc.open_gram`), which several processes can write at once. A rerun resumes
        either; one written for another function (its traced program and the arrays it closes
        over), params, data, options, batch size or number of devices is refused, naming what
        differs.
      devices: this process's devices to spread tiles over (default: ``jax.local_devices()``,
        all of them on one process). Each block
        then holds ``batch_size`` examples per device, sharded over a 1-D mesh; the sides and
        the tile rows are computed where their examples are.
      cache_bytes: bytes of sides kept for reuse (all devices together), least recently used
        dropped first; default 2 GiB. 0 keeps none: each row's side is still computed once per
        row, column sides once per tile.
      progress: show a tqdm progress bar (tiles done, ETA).
      **ntk_options: :func:`ntkc.ntk_fn`'s options (trace_axes, diagonal_axes, method,
        by_param, ...). ``by_param=True`` returns a pytree shaped like ``params`` of Gram
        matrices (in memory: not with ``out``).

    Returns:
      The kernel (``numpy`` array, the memory-mapped file's array, or for a store its
      :class:`ntkc.gram_store.GramArray`), laid out as :func:`ntkc.ntk_fn` lays out
      ``kernel_fn(X1, X2, params)``; with ``by_param``, a pytree shaped like ``params`` of such
      arrays, which sum to the kernel.

    Under ``jax.distributed`` (several processes) every process makes the same call; the tiles
    left to compute are cut into one contiguous run per process (serpentine order), each run on
    that process's local devices, sides reused within the process. With a store every process
    writes its own tiles and the call returns, on every process, once all are on disk; with
    ``out=None`` the tiles are gathered (``process_allgather``) so that each process receives
    the whole kernel. A ``.npy`` ``out`` is refused: processes cannot share one file.
    """
    ntk_options.setdefault("vmap_axes", 0)
    if ntk_options["vmap_axes"] is None:
        raise ValueError(
            "gram: vmap_axes=None (examples may interact) cannot be computed in tiles: the kernel "
            "of a tile of examples is a block of the whole kernel only when f treats each example "
            "on its own. Compute the whole kernel at once with ntkc.ntk_fn(f, vmap_axes=None)"
            "(X1, X2, params), or make f per-example (e.g. Flax BatchNorm with "
            "use_running_average=True) and pass vmap_axes=0")
    if ntk_options["vmap_axes"] != 0:
        raise ValueError("gram: vmap_axes must be 0 (examples along axis 0 of inputs and outputs)")
    by_param = bool(ntk_options.get("by_param", False))
    if by_param and out is not None:
        raise ValueError("gram: by_param=True returns its kernels in memory; out= is not "
                         "supported with it (call gram once per params leaf instead)")
    cache_bytes = check_bytes(cache_bytes, "cache_bytes", allow_zero=True)
    if cache_bytes is None:
        cache_bytes = DEFAULT_CACHE_BYTES
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise ValueError(f"devices must be a non-empty sequence of jax devices, got {devices!r}")
    processes = jax.process_count()
    if any(d.process_index != jax.process_index() for d in devices):
        raise ValueError("gram: devices must be this process's own (jax.local_devices()): under "
                         "jax.distributed each process computes its share of the tiles on its "
                         "local devices")
    if processes > 1 and out is not None and not is_store(out):
        raise ValueError(f"gram: out={os.fspath(out)!r} is one .npy file, which {processes} "
                         "processes cannot share; name a directory (a path without .npy) to "
                         "write a tile store, or out=None to receive the kernel in memory")
    mesh = Mesh(np.array(devices), (_AXIS,))
    kernel_fn = KernelFunction(f, memory_limit=memory_limit, **ntk_options)
    symmetric = X2 is None
    X2 = X1 if symmetric else X2
    n1 = _num_examples(X1, "X1")
    n2 = _num_examples(X2, "X2")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size is None:
        batch_size = _choose_batch_size(kernel_fn, params, X1, n1, memory_limit)

    # The method (auto resolved once, on one tile) and the layout.
    config, _ = kernel_fn.prepare(_slicing.take(X1, 0, 0, batch_size),
                                  _slicing.take(X2, 0, 0, batch_size), params)
    if len(config.axes) != 1:
        raise ValueError("gram supports functions with one output array")
    axes = config.axes[0]
    if 0 not in axes.free:
        raise ValueError("gram: the example axis (0) must be neither traced nor diagonal")
    requested = ntk_options.get("method", registry.AUTO)
    if (config.block is not None or config.chunk is not None) and not (
            isinstance(requested, str) and requested == registry.AUTO):
        # the factored programs cannot split a tile: never run one over memory_limit silently
        fits = _choose_batch_size(kernel_fn, params, X1, n1, memory_limit)
        raise ValueError(f"batch_size={batch_size}: a tile of {batch_size} x {batch_size} examples "
                         f"does not fit memory_limit={memory_limit} with method={requested!r} "
                         f"(the planner would split it); use batch_size <= {fits} or a larger "
                         "memory_limit")
    method = _single_method(requested, config)
    if method is not None:
        options = {k: v for k, v in ntk_options.items() if k != "method"}
        kernel_fn = KernelFunction(f, method=method, memory_limit=memory_limit, **options)
    shape = (n1, n2) + axes.kernel_shape[2:]
    dtype = jax.eval_shape(lambda p, x: f(p, x), params, _slicing.take(X1, 0, 0, 1)).dtype

    # Blocks of batch_size examples per device, or fewer for a small dataset.
    d = len(devices)
    block1, block2 = (d * min(batch_size, math.ceil(n / d)) for n in (n1, n2))
    starts1 = list(range(0, n1, block1))
    starts2 = list(range(0, n2, block2))
    tiles = [(i, j) for i in starts1 for j in starts2 if not symmetric or j >= i]
    done: set = set()
    record = store = None
    gather = out is None and processes > 1  # each process computes its share, then all gather
    if out is None or is_store(out):  # a store is opened below, once the layout is known
        n_leaves = len(jax.tree.leaves(params)) if by_param else 1
        results = [] if out is not None or gather else [np.zeros(shape, dtype)
                                                        for _ in range(n_leaves)]
    else:
        out = os.fspath(out)
        record = out + ".progress.json"
        program, consts = _program(f, params, X1)
        fingerprints = _fingerprints(program, consts, params, X1, None if symmetric else X2,
                                     {**ntk_options, "batch_size": batch_size, "devices": d})
        if os.path.exists(out) and os.path.exists(record):
            with open(record) as fh:
                meta = json.load(fh)
            _check_resumable(out, meta, fingerprints, program, shape)
            done = {tuple(t) for t in meta["done"]}
            results = [np.lib.format.open_memmap(out, mode="r+")]
        else:
            results = [np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=shape)]
            meta = {"fingerprints": fingerprints, "program": program, "shape": list(shape),
                    "done": []}
            with open(record, "w") as fh:
                json.dump(meta, fh)

    same_shapes = (jax.tree.map(np.shape, _slicing.take(X1, 0, 0, 1))
                   == jax.tree.map(np.shape, _slicing.take(X2, 0, 0, 1)))
    factored = _Factored(kernel_fn, params, X1, mesh, hoist=same_shapes and block1 == block2)
    sharding = NamedSharding(mesh, P(_AXIS))
    cache = _SideCache(cache_bytes)

    def side(x, start):
        size = block1 if x is X1 else block2
        return cache.get((x is X1, start),
                         lambda: factored.side(_put(_slicing.padded_block(x, start, size),
                                                    sharding)))

    perm = axes.mirror_permutation()
    if out is not None and is_store(out):
        store = _open_store(out, f, params, X1, None if symmetric else X2,
                            {**ntk_options, "batch_size": batch_size, "devices": d},
                            shape, dtype, (block1, block2), perm)
        done = {(bi * block1, bj * block2) for bi, bj in store.done()}
    if processes > 1:  # process 0's view of the store, so that all processes agree what is left
        done = _agree_done(tiles, done)
    todo = _tile_order([t for t in tiles if t not in done])
    shares = _shares(todo, processes)
    mine = shares[jax.process_index()]
    computed = []  # gather: this process's tiles, uncropped, for the other processes
    if progress:
        bar = _progress_bar(len(tiles), len(tiles) - len(todo)) if processes == 1 else \
            _progress_bar(len(mine), 0, f"ntkc.gram (process {jax.process_index()} of {processes})")
    else:
        bar = None
    row = (None, None)
    try:
        for i, j in mine:
            r, c = min(block1, n1 - i), min(block2, n2 - j)
            if row[0] != i:  # held for the whole row, even if the cache drops it
                row = (i, side(X1, i))
            column = row[1] if symmetric and j == i else side(X2, j)
            pieces = factored.pair(row[1], block1, column, block2, X2)
            if store is not None:
                store.write(i // block1, j // block2, pieces[0][:r, :c])
            elif gather:
                computed.append([p.astype(dtype, copy=False) for p in pieces])
            for result, tile in zip(results, pieces):
                _place(result, tile[:r, :c], i, j, symmetric, perm)
            if record is not None:
                results[0].flush()
                meta["done"].append([i, j])
                tmp = record + ".tmp"
                with open(tmp, "w") as fh:
                    json.dump(meta, fh)
                os.replace(tmp, record)  # atomic: a crash never leaves a half-written record
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if store is not None:
        if processes > 1:  # every process's share is on disk before any returns
            multihost_utils.sync_global_devices(f"ntkc.gram {os.path.abspath(out)}")
        return open_gram(out)
    if gather:
        tile_shape = (block1, block2) + shape[2:]
        results = _gather(shares, computed, n_leaves, tile_shape, shape, dtype, symmetric, perm)
    if by_param:
        return jax.tree.unflatten(jax.tree.structure(params), results)
    return results[0]


def _place(result, tile, i, j, symmetric, perm):
    """A tile (cropped) into the whole kernel, and mirrored below the diagonal."""
    r, c = tile.shape[:2]
    result[i:i + r, j:j + c] = tile
    if symmetric and j != i:
        result[j:j + c, i:i + r] = np.transpose(tile, perm)


def _open_store(out, f, params, x1, x2, options, shape, dtype, block, perm) -> GramStore:
    """The tile store at ``out``, new or resumed; refused if it is another kernel's."""
    program, consts = _program(f, params, x1)
    fingerprints = _fingerprints(program, consts, params, x1, x2, options)
    manifest = {"format": FORMAT, "version": VERSION, "shape": list(shape),
                "dtype": np.dtype(dtype).name, "symmetric": x2 is None, "block": list(block),
                "mirror": list(perm), "fingerprints": fingerprints, "program": program}
    check = lambda old: _check_resumable(out, old, fingerprints, program, tuple(shape),
                                         remedy="remove the directory")
    return GramStore.open(out, manifest, check)


def _agree_done(tiles, done) -> set:
    """Process 0's set of done tiles, on every process (no process writes a tile before it
    has this, so all agree on what is left whatever each saw on disk)."""
    mask = np.array([t in done for t in tiles], np.int32)
    mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
    return {t for t, m in zip(tiles, mask) if m}


def _shares(todo, processes) -> list[list]:
    """The tiles left, in serpentine order, cut into one contiguous run per process: a process
    spans few block rows, so it computes few row sides and its cache sees neighbouring tiles."""
    cuts = [len(todo) * p // processes for p in range(processes + 1)]
    return [todo[cuts[p]:cuts[p + 1]] for p in range(processes)]


def _gather(shares, computed, n_leaves, tile_shape, shape, dtype, symmetric, perm) -> list:
    """The whole kernel on every process from each process's tiles (``process_allgather`` of
    equal-sized stacks: the runs differ by at most one tile, the shorter ones are padded)."""
    count = max(len(s) for s in shares)
    stacks = [np.zeros((count,) + tile_shape, dtype) for _ in range(n_leaves)]
    for k, pieces in enumerate(computed):
        for stack, piece in zip(stacks, pieces):
            stack[k] = piece
    stacks = [np.asarray(s) for s in multihost_utils.process_allgather(stacks)]
    results = [np.zeros(shape, dtype) for _ in range(n_leaves)]
    for p, share in enumerate(shares):
        for k, (i, j) in enumerate(share):
            for result, stack in zip(results, stacks):
                _place(result, stack[p, k][:shape[0] - i, :shape[1] - j], i, j, symmetric, perm)
    return results


def _progress_bar(total, initial, desc="ntkc.gram"):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; without it, no bar
        return None
    return tqdm(total=total, initial=initial, unit="tile", desc=desc)
