"""Elementwise rules: ∂y/∂p is diagonal (identity times a factor of y's shape, or a scalar)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ntkc._compat import add_any_p
from ntkc.ir import Form
from ntkc.rules.registry import register


def _operand_labels(shape, out_shape, tag):
    """Labels of an elementwise operand against y: y's label where sizes match; an own label for
    a size-1 axis that broadcasts (and none at all for a rank-0 operand)."""
    if len(shape) == 0:
        return ()
    return tuple(a if n == out_shape[a] else (tag, a) for a, n in enumerate(shape))


def _diagonal(outs, p_shape, factor=None, structure="diagonal"):
    out_shape = tuple(outs[0].shape)
    y = tuple(range(len(out_shape)))
    p = _operand_labels(tuple(p_shape), out_shape, "p")
    factors = ()
    if factor is not None:
        factors = ((factor, _operand_labels(jnp.shape(factor), out_shape, "f")),)
    return [Form(y, p, factors, structure)]


def def_identity(primitive, sign: float = 1.0):
    """y = ±p (+ other tangents): identity structure."""

    @register(primitive, "identity" if sign > 0 else "identity x -1")
    def rule(*, operands, index, outs, shapes, **_):
        factor = None if sign > 0 else jnp.asarray(sign, outs[0].dtype)
        return _diagonal(outs, shapes[index], factor, "identity")

    return rule


@register(lax.sub_p, "identity, x -1 for the subtrahend")
def _sub(*, operands, index, outs, shapes, **_):
    factor = None if index == 0 else jnp.asarray(-1, outs[0].dtype)
    return _diagonal(outs, shapes[index], factor, "identity")


@register(lax.neg_p, "identity x -1")
def _neg(*, operands, index, outs, shapes, **_):
    return _diagonal(outs, shapes[index], jnp.asarray(-1, outs[0].dtype), "identity")


@register(lax.mul_p, "diagonal: the other operand")
def _mul(*, operands, index, outs, shapes, **_):
    other = operands[1 - index]
    if other is None:  # both tangent: not linear, cannot happen in a linear jaxpr
        return None
    return _diagonal(outs, shapes[index], other, "diagonal")


@register(lax.div_p, "diagonal: 1 / denominator")
def _div(*, operands, index, outs, shapes, **_):
    if index != 0 or operands[1] is None:
        return None
    return _diagonal(outs, shapes[index], 1 / operands[1], "diagonal")


@register(lax.select_n_p, "diagonal: the mask of the selected case")
def _select_n(*, operands, index, outs, shapes, **_):
    pred = operands[0]
    if index == 0 or pred is None:
        return None
    pred = jnp.asarray(pred)  # a literal predicate arrives as a Python bool or int
    mask = (pred == (index - 1)) if pred.dtype != jnp.bool_ else (pred if index == 2 else ~pred)
    return _diagonal(outs, shapes[index], mask.astype(outs[0].dtype), "diagonal (mask)")


for _p in (lax.add_p, add_any_p, lax.convert_element_type_p, lax.copy_p, lax.reduce_precision_p):
    def_identity(_p)
