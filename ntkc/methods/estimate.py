"""A rough FLOP estimate per method, from shapes and the forward jaxpr, for ``method="auto"``.

This is deliberately simple (forward FLOPs of matmuls and convolutions, one unit per element for
everything else); the cost-driven planner replaces it with per-term costs.
"""

from __future__ import annotations

import math

import jax
from jax.extend import core as jex_core

from ntkc._problem import Config


def _size(shape) -> int:
    return math.prod(shape)


def _eqn_flops(eqn) -> int:
    name = eqn.primitive.name
    out = sum(_size(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
    if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2 * out * _size([lhs[d] for d in contract])
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        dn = eqn.params["dimension_numbers"]
        spatial = [rhs[d] for d in dn.rhs_spec[2:]]
        return 2 * out * _size(spatial) * rhs[dn.rhs_spec[1]]
    return out


def jaxpr_flops(jaxpr) -> int:
    """Approximate FLOPs of a (closed) jaxpr, recursing into sub-jaxprs."""
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        subs = [
            v
            for v in eqn.params.values()
            if isinstance(v, (jex_core.ClosedJaxpr, jex_core.Jaxpr))
        ]
        for v in eqn.params.values():
            if isinstance(v, (tuple, list)):
                subs += [s for s in v if isinstance(s, (jex_core.ClosedJaxpr, jex_core.Jaxpr))]
        if subs:
            repeat = eqn.params.get("length", 1)
            total += repeat * sum(jaxpr_flops(s) for s in subs)
        else:
            total += _eqn_flops(eqn)
    return total


def method_costs(config: Config, flops1: int, flops2: int, n_params: int) -> dict[str, float]:
    """Estimated FLOPs of the jacobian and ntvp methods for a resolved request."""
    costs = {"jacobian": 0.0, "ntvp": 0.0}
    for k, axes in enumerate(config.axes):
        s1, s2 = _size(axes.shape1), _size(axes.shape2)
        if config.batching is None:
            n1 = n2 = 1
            batch_free = True
        else:
            n1, n2 = config.batching.size1, config.batching.size2
            batch_free = config.batching.outputs[k] in axes.free
        reverse = 3 * (s1 * flops1 / n1 + (0 if config.x2_is_x1 else s2 * flops2 / n2))
        contract = 2 * _size(axes.kernel_shape) * axes.trace_size * n_params
        costs["jacobian"] += reverse + contract
        if batch_free:
            costs["ntvp"] += 3 * s2 * (flops1 + flops2 / n2 * (n1 if config.batching else 1))
        else:
            costs["ntvp"] += 3 * s2 * (flops1 + flops2) / n1
    return costs


def count_params(params) -> int:
    return sum(_size(l.shape) for l in jax.tree.leaves(params))
