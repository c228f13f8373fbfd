"""``matmul(x, w)``: ``x @ w`` as a primitive of its own that has no structured rule, so that the
structured method takes the dense rule (the fallback) where a parameter enters it; for the tests
of that fallback (its estimates, its reports, the methods chosen around it). Every JAX
transformation works on it: forward and reverse mode, ``vmap`` (a batch of weights becomes an
einsum, which has rules) and lowering.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

matmul_p = Primitive("matmul_without_rule")


def matmul(x, w):
    """``x @ w`` for ``x`` of shape ``(..., i)`` and a matrix ``w`` of shape ``(i, j)``."""
    return matmul_p.bind(x, w)


def _impl(x, w):
    return jnp.einsum("...i,ij->...j", x, w)


def _abstract_eval(x, w):
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise TypeError(f"matmul: x {x.shape} and w {w.shape} do not match")
    return jax.core.ShapedArray(x.shape[:-1] + w.shape[1:], jnp.result_type(x.dtype, w.dtype))


def _transpose(ct, x, w):
    if ad.is_undefined_primal(w):
        return None, jnp.einsum("...i,...j->ij", x, ct)
    return jnp.einsum("...j,ij->...i", ct, w), None


def _batch(args, dims):
    (x, w), (dx, dw) = args, dims
    if dw is None:  # more leading axes of x: the primitive itself
        return matmul(jnp.moveaxis(x, dx, 0), w), 0
    w = jnp.moveaxis(w, dw, 0)
    if dx is None:
        return jnp.einsum("...i,bij->b...j", x, w), 0
    return jnp.einsum("b...i,bij->b...j", jnp.moveaxis(x, dx, 0), w), 0


matmul_p.def_impl(_impl)
matmul_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(matmul_p, mlir.lower_fun(_impl, multiple_results=False))
ad.defjvp(matmul_p, lambda dx, x, w: matmul(dx, w), lambda dw, x, w: matmul(x, dw))
ad.primitive_transposes[matmul_p] = _transpose
batching.primitive_batchers[matmul_p] = _batch
