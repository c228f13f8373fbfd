"""Gram matrices over a dataset: tiled, symmetric when X2 is None, resumable on disk.

The kernel of ``X1`` against ``X2`` is computed block by block (``batch_size`` examples a side),
so that memory stays bounded whatever N; when ``X2`` is None only the tiles on and above the
diagonal are computed and the rest is mirrored. With ``out="kernel.npy"`` the kernel is written
to a memory-mapped ``.npy`` file and the finished tiles are recorded beside it, so that an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ntkc._api import KernelFunction


def _num_examples(x, name) -> int:
    sizes = {np.shape(l)[0] for l in jax.tree.leaves(x) if np.ndim(l) > 0}
    if len(sizes) != 1:
        raise ValueError(f"{name}: every leaf needs the same number of examples on axis 0, "
                         f"got sizes {sorted(sizes)}")
    return sizes.pop()


def _take(x, start, stop):
    return jax.tree.map(lambda l: l[start:stop], x)


def _fingerprint(params, x1, x2, options) -> str:
    """A hash of everything the kernel depends on: a file of another model or data is refused."""
    h = hashlib.sha256(repr(sorted((k, repr(v)) for k, v in options.items())).encode())
    for tree in (params, x1, x2):
        for leaf in jax.tree.leaves(tree):
            a = np.asarray(leaf)
            h.update(repr((a.shape, str(a.dtype))).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _mirror_permutation(axes) -> list[int]:
    """Kernel axes of K(x2-block, x1-block) from K(x1-block, x2-block): swap every pair."""
    perm, pos = [], 0
    for a in range(axes.ndim):
        if a in axes.trace:
            continue
        if a in axes.diagonal:
            perm.append(pos)
            pos += 1
        else:
            perm += [pos + 1, pos]
            pos += 2
    return perm


def _choose_batch_size(kernel_fn, params, x1, n, memory_limit) -> int:
    """The largest power-of-two block whose structured plan's peak fits ``memory_limit``."""
    if memory_limit is None:
        return min(n, 64)
    from ntkc._api import plan

    size = 1
    while size * 2 <= n:
        try:
            p = plan(kernel_fn.f, _take(x1, 0, size * 2), None, params,
                     trace_axes=kernel_fn.trace_axes, diagonal_axes=kernel_fn.diagonal_axes,
                     vmap_axes=kernel_fn.vmap_axes, memory_limit=memory_limit)
        except ValueError:
            break
        if p.cost.peak > memory_limit:
            break
        size *= 2
    return size


def gram(f: Callable, params, X1, X2=None, *, batch_size: int | None = None,
         memory_limit: int | None = None, out: str | os.PathLike | None = None,
         progress: bool = True, **ntk_options):
    """The NTK Gram matrix of a dataset, tile by tile.

    Args:
      f: ``f(params, x)``; examples along axis 0 of every leaf of ``X1``/``X2`` and of the
        outputs (``vmap_axes`` defaults to 0: examples must not interact).
      params: parameters.
      X1, X2: the datasets; ``X2=None`` computes the symmetric ``Θ(X1, X1)`` from the tiles on
        and above the diagonal only.
      batch_size: examples per block a side; default: chosen from ``memory_limit`` (the largest
        power of two whose plan fits), else 64. Any N works, not only multiples.
      memory_limit: bytes that one tile's program may use (passed to the planner as well).
      out: None (return an array) or a ``.npy`` path, written tile by tile; the finished tiles are
        recorded in ``<out>.progress.json`` and a rerun resumes; a file written for another
        model, data or options is refused.
      progress: show a tqdm progress bar (tiles done, ETA).
      **ntk_options: :func:`ntkc.ntk_fn`'s options (trace_axes, diagonal_axes, method, ...).

    Returns:
      The kernel (``numpy`` array, or the memory-mapped file's array), laid out as
      :func:`ntkc.ntk_fn` lays out ``kernel_fn(X1, X2, params)``.
    """
    ntk_options.setdefault("vmap_axes", 0)
    if ntk_options["vmap_axes"] != 0:
        raise ValueError("gram: vmap_axes must be 0 (examples along axis 0 of inputs and outputs)")
    kernel_fn = KernelFunction(f, memory_limit=memory_limit, **ntk_options)
    symmetric = X2 is None
    n1 = _num_examples(X1, "X1")
    n2 = n1 if symmetric else _num_examples(X2, "X2")
    if batch_size is None:
        batch_size = _choose_batch_size(kernel_fn, params, X1, n1, memory_limit)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")

    # The layout: from one small tile's config.
    config, _ = kernel_fn.prepare(_take(X1, 0, 1), _take(X1 if symmetric else X2, 0, 1), params)
    if len(config.axes) != 1:
        raise ValueError("gram supports functions with one output array")
    axes = config.axes[0]
    if 0 not in axes.free:
        raise ValueError("gram: the example axis (0) must be neither traced nor diagonal")
    shape = (n1, n2) + axes.kernel_shape[2:]
    dtype = jax.eval_shape(lambda p, x: f(p, x), params, _take(X1, 0, 1)).dtype

    starts1 = list(range(0, n1, batch_size))
    starts2 = list(range(0, n2, batch_size))
    tiles = [(i, j) for i in starts1 for j in starts2 if not symmetric or j >= i]
    done: set = set()
    if out is None:
        result = np.zeros(shape, dtype)
        record = None
    else:
        out = os.fspath(out)
        record = out + ".progress.json"
        fingerprint = _fingerprint(params, X1, X2, {**ntk_options, "batch_size": batch_size})
        if os.path.exists(out) and os.path.exists(record):
            with open(record) as fh:
                meta = json.load(fh)
            if meta.get("fingerprint") != fingerprint or tuple(meta.get("shape", ())) != shape:
                raise ValueError(f"{out} was written for another model, data, options or "
                                 "batch_size; remove it (and its .progress.json) or pick another out")
            done = {tuple(t) for t in meta["done"]}
            result = np.lib.format.open_memmap(out, mode="r+")
        else:
            result = np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=shape)
            meta = {"fingerprint": fingerprint, "shape": list(shape), "done": []}
            with open(record, "w") as fh:
                json.dump(meta, fh)

    perm = _mirror_permutation(axes)
    todo = [t for t in tiles if t not in done]
    bar = _progress_bar(len(tiles), len(tiles) - len(todo)) if progress else None
    try:
        for i, j in todo:
            a = _take(X1, i, i + batch_size)
            b = _take(X1 if symmetric else X2, j, j + batch_size)
            tile = np.asarray(kernel_fn(a, b, params))
            result[i:i + tile.shape[0], j:j + tile.shape[1]] = tile
            if symmetric and j != i:
                result[j:j + tile.shape[1], i:i + tile.shape[0]] = np.transpose(tile, perm)
            if record is not None:
                result.flush()
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
    return result


def _progress_bar(total, initial):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; without it, no bar
        return None
    return tqdm(total=total, initial=initial, unit="tile", desc="ntkc.gram")
