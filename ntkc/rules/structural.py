"""Structural rules: broadcasts and reductions of a parameter value.

Transpose, reshape, squeeze, convert and copy on a parameter alone are bijections on its entries;
the uses pass folds them into the parameter's chain, so they never need a rule as a use.
"""

from __future__ import annotations

from jax import lax

from ntkc.ir import Form
from ntkc.rules.registry import register


@register(lax.broadcast_in_dim_p, "identity on kept axes, broadcast on new ones")
def _broadcast_in_dim(*, operands, index, outs, shapes, broadcast_dimensions, **_):
    if index != 0:
        return None
    out_shape = outs[0].shape
    p_shape = shapes[0]
    out = [("y", d) for d in range(len(out_shape))]
    p = []
    for i, d in enumerate(broadcast_dimensions):
        if p_shape[i] == out_shape[d]:
            p.append(out[d])
        else:  # a size-1 axis expanded: p's own label, summed over on y's side
            p.append(("p", i))
    return [Form(out, p, (), "broadcast")]


@register(lax.reduce_sum_p, "identity on kept axes, summed on reduced ones")
def _reduce_sum(*, operands, index, outs, shapes, axes, **_):
    p = [("p", i) for i in range(len(shapes[0]))]
    out = [p[i] for i in range(len(p)) if i not in axes]
    return [Form(out, p, (), "reduction")]
