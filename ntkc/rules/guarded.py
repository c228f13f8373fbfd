"""Equations of a conditional's branch, flattened out of the ``cond`` (``ntkc.passes.conds``).

A tangent ``cond`` / ``switch`` is rewritten so that every branch runs, and each output selects
the taken branch's value (``select_n``, exact). The equations of a branch that read primal
values run on that branch's residuals, which are uninitialized memory (``empty``) when it is not
taken, and on whatever the branch computes from them: inf, NaN. So each such equation is wrapped
in a ``guarded`` equation ``guarded(g, *operands)`` with ``g`` the boolean "this branch is taken"
(nested conditionals: the conjunction). It evaluates as ``where(g, eqn(where(g, x, 0)), 0)``, so
that its values, and in the cotangent pass (the transpose) the cotangents it passes to its
operands, are exactly zero when the branch is not taken, whatever the residuals hold (``where``,
never a product: ``0 * NaN`` is NaN). Its rule is the wrapped primitive's, with every factor
masked the same way, so the einsum terms of an untaken branch's parameter uses are exact zeros.

``guarded`` has an abstract evaluation only: it lives in the analysed jaxpr, and ntkc evaluates
it through :func:`ntkc.rules.apply_linear` (its linear form below), never by binding it.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from ntkc._compat import Primitive
from ntkc.ir import Form, OneHot
from ntkc.rules.registry import (apply_linear, flops_rule, lookup, register, register_flops,
                                 register_linear_form)

guarded_p = Primitive("guarded")
guarded_p.multiple_results = True

_PRIMITIVE, _AVALS = "guarded_primitive", "guarded_avals"


def _abstract_eval(g, *avals, guarded_avals, **_):
    return list(guarded_avals)


guarded_p.def_abstract_eval(_abstract_eval)


def guard(g, eqn, args: list) -> list:
    """Binds ``guarded(g, *args)`` for the equation ``eqn`` (a branch's equation, read with
    ``args``); its parameters, and the wrapped primitive's, are the guarded equation's."""
    return guarded_p.bind(g, *args, **eqn.params, guarded_primitive=eqn.primitive,
                          guarded_avals=tuple(v.aval for v in eqn.outvars))


def unwrap(eqn):
    """The equation a ``guarded`` equation wraps (without ``g``)."""
    params = {k: v for k, v in eqn.params.items() if k not in (_PRIMITIVE, _AVALS)}
    return eqn.replace(invars=eqn.invars[1:], primitive=eqn.params[_PRIMITIVE], params=params)


def _mask(g, x):
    """``x`` where the branch is taken, else exact zeros (floating-point values only)."""
    if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.inexact):
        return x  # a Python scalar is a literal, an integer cannot be non-finite
    return jnp.where(g, x, jnp.zeros((), x.dtype))


@register_linear_form(guarded_p)
def _guarded_linear(eqn, args):
    g, ins = args[0], args[1:]
    inner = unwrap(eqn)

    def taken(arrays):
        it = iter(arrays)
        outs = apply_linear(inner, [_mask(g, next(it)) if _is_array(a) else a for a in ins])
        return [_mask(g, y) for y in outs]

    arrays = [a for a in ins if _is_array(a)]
    if _guarded_flops(eqn) <= 2 * sum(math.prod(v.aval.shape) for v in inner.outvars):
        return taken(arrays)  # elementwise: the masks, which XLA fuses
    # A contraction: run it only when the branch is taken (g is one scalar per side, so under
    # vmap this stays a conditional; a batched g makes it a select, exact too).
    zeros = lambda arrays: [jnp.zeros(v.aval.shape, v.aval.dtype) for v in inner.outvars]
    return lax.cond(g, taken, zeros, arrays)


def _is_array(a) -> bool:
    return a is not None and hasattr(a, "dtype")


@register_flops(guarded_p)
def _guarded_flops(eqn):
    inner = unwrap(eqn)
    rule = flops_rule(inner.primitive)
    if rule is not None:
        return rule(inner)
    return sum(math.prod(v.aval.shape) for v in inner.outvars)


def _masked_factor(g, array, labels):
    if isinstance(labels, OneHot):  # index `size` is one past the end: an all-zero row
        return jnp.where(g, array, labels.size), labels
    return _mask(g, array), labels


@register(guarded_p, "the wrapped primitive's, masked by the branch's predicate")
def _guarded(*, operands, index, outs, shapes, guarded_primitive, guarded_avals, **params):
    g = operands[0]
    if index == 0 or g is None:
        return None
    rule = lookup(guarded_primitive)
    if rule is None:
        return None
    forms = rule(list(operands[1:]), index - 1, outs, list(shapes[1:]), params)
    if forms is None:
        return None
    return [Form(f.out_labels, f.param_labels,
                 tuple(_masked_factor(g, a, l) for a, l in f.factors),
                 f"{f.structure} (in a branch)" if f.structure else "in a branch")
            for f in forms]
