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
from jax import lax

from ntkc._compat import select_and_gather_add_p
from ntkc.rules.registry import register_linear_form


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


@register_linear_form(select_and_gather_add_p)
def _pooled_tangent(eqn, args):
    """Max (min) pooling's JVP: the tangent at each window's first maximum (minimum).

    Its transpose in JAX is ``select_and_scatter_add``, which XLA:CPU expands into an iota of
    indices per window entry, a concatenate and a scatter: 1.6 s of op time in ResNet-18's
    stem at N=8, O=8, 224² (``bench/profile.py``). Written as masks on the window's strided
    slices, the transpose is masked pads: 3.1x faster on that stem's shape. On other backends
    (a native select-and-scatter, unmeasured) JAX's form is kept.
    """
    p = eqn.params
    if (not _on_cpu() or any(d != 1 for d in p["base_dilation"])
            or any(d != 1 for d in p["window_dilation"])
            or p["select_prim"] not in (lax.ge_p, lax.le_p)):
        return None
    tangent, operand = args
    larger = p["select_prim"] is lax.ge_p
    fill = -jnp.inf if larger else jnp.inf
    pads = [(lo, hi, 0) for lo, hi in p["padding"]]
    operand = lax.pad(operand, jnp.array(fill, operand.dtype), pads)
    tangent = lax.pad(tangent, jnp.array(0, tangent.dtype), pads)
    dims, strides = p["window_dimensions"], p["window_strides"]
    count = [(n - d) // s + 1 for n, d, s in zip(operand.shape, dims, strides)]
    best = value = None
    for offset in itertools.product(*(range(d) for d in dims)):  # row-major: XLA's window order
        end = [o + (c - 1) * s + 1 for o, c, s in zip(offset, count, strides)]
        x = lax.slice(operand, offset, end, strides)
        t = lax.slice(tangent, offset, end, strides)
        if best is None:
            best, value = x, t
            continue
        take = x > best if larger else x < best  # ties keep the earlier entry, as ge / le do
        best = jnp.where(take, x, best)
        value = jnp.where(take, t, value)
    return [value]
