"""Linear forms for the cotangent pass: equations of the linear map rewritten into the same map
in a form whose transpose runs faster (see ``register_linear_form``).

The cotangent pass transposes everything downstream of the parameter uses, once per output basis
vector and example. How XLA runs a primitive's transpose there matters as much as any
contraction order (``bench/profile.py`` shows it per op).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ntkc._compat import select_and_gather_add_p
from ntkc.rules.registry import register_linear_form


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _phases(a, fill, padding, size, strides) -> list:
    """``a`` padded to ``size`` and split into its stride phases: phase ``r`` (row-major over the
    axes' residues) holds the entries ``r + strides * i``. A reshape, a transpose and
    ``lax.split``, whose transposes are a transpose and one concatenate."""
    pads = [(lo, total - n - lo, 0) for n, (lo, _), total in zip(a.shape, padding, size)]
    a = lax.pad(a, jnp.array(fill, a.dtype), pads)
    blocks = [total // s for total, s in zip(size, strides)]
    a = a.reshape([v for pair in zip(blocks, strides) for v in pair])
    rank = len(blocks)
    a = a.transpose([2 * i + 1 for i in range(rank)] + [2 * i for i in range(rank)])
    a = a.reshape((-1, *blocks))
    return [part[0] for part in lax.split(a, [1] * a.shape[0], axis=0)]


@register_linear_form(select_and_gather_add_p)
def _pooled_tangent(eqn, args):
    """Max (min) pooling's JVP: the tangent at each window's first maximum (minimum).

    Its transpose in JAX is ``select_and_scatter_add``, which XLA:CPU expands into an iota of
    indices per window entry, a concatenate and a scatter: 14% of the op time of ResNet-18's
    structured program at N=8, O=8, 224² (``bench/profile.py``). Here the operand and the
    tangent are split into their stride phases once, and each window entry is a contiguous
    slice of its phase, selected by a mask: the transpose is small pads, a concatenate and a
    transpose. (Strided slices of the padded arrays instead transpose into one full-size pad
    per window entry, which XLA:CPU does not fuse: no faster than select-and-scatter.) On other
    backends (a native select-and-scatter, unmeasured) JAX's form is kept.
    """
    p = eqn.params
    if (not _on_cpu() or any(d != 1 for d in p["base_dilation"])
            or any(d != 1 for d in p["window_dilation"])
            or p["select_prim"] not in (lax.ge_p, lax.le_p)):
        return None
    tangent, operand = args
    larger = p["select_prim"] is lax.ge_p
    dims, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
    count = [(n + lo + hi - d) // s + 1
             for n, (lo, hi), d, s in zip(operand.shape, padding, dims, strides)]
    # a multiple of the stride on each axis, holding the padded input and every window
    size = [s * max(-(-(n + lo + hi) // s), c + (d - 1) // s)
            for n, (lo, hi), d, s, c in zip(operand.shape, padding, dims, strides, count)]
    operands = _phases(operand, -jnp.inf if larger else jnp.inf, padding, size, strides)
    tangents = _phases(tangent, 0, padding, size, strides)
    best = value = None
    for offset in itertools.product(*(range(d) for d in dims)):  # row-major: XLA's window order
        phase = int(np.ravel_multi_index([o % s for o, s in zip(offset, strides)], strides))
        start = [o // s for o, s in zip(offset, strides)]
        end = [b + c for b, c in zip(start, count)]
        x = lax.slice(operands[phase], start, end)
        t = lax.slice(tangents[phase], start, end)
        if best is None:
            best, value = x, t
            continue
        take = x > best if larger else x < best  # ties keep the earlier entry, as ge / le do
        best = jnp.where(take, x, best)
        value = jnp.where(take, t, value)
    return [value]
