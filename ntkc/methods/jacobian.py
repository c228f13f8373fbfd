"""Jacobian contraction: build J(x1) and J(x2) by reverse mode, contract leaf by leaf.

Cost N·O·[FP] + N²·O²·P. Traced and diagonal axes are applied inside the contraction (one einsum
per parameter leaf), so the O x O block is never built when it is not asked for.
"""

from __future__ import annotations

import string

import jax
import jax.numpy as jnp

from ntkc._problem import Problem
from ntkc.methods._batch import per_example_jacobians
from ntkc.methods.registry import GramSides, Method, register
from ntkc.passes import capability

NAME = "jacobian"

# Output axes take letters from the front, parameter axes from the back.
_PARAM_LETTERS = string.ascii_letters[::-1]


def contract_jacobians(j1, j2, axes, by_param: bool = False):
    """Θ for one output leaf from two Jacobian pytrees shaped ``(*out, *param_leaf)``
    (with ``by_param``, the list of each parameter leaf's term)."""
    l1, l2, lo = axes.labels()
    terms = []
    for a, b in zip(jax.tree.leaves(j1), jax.tree.leaves(j2)):
        p = _PARAM_LETTERS[: a.ndim - axes.ndim]
        terms.append(jnp.einsum(f"{l1}{p},{l2}{p}->{lo}", a, b) / axes.trace_size)
    return terms if by_param else sum(terms[1:], terms[0])


def kernel(prob: Problem) -> list:
    """Θ per output leaf (a flat list) by Jacobian contraction."""
    capability.check(jax.make_jaxpr(prob.full_fn(1))(prob.params),
                     len(jax.tree.leaves(prob.params)), NAME)
    jac1 = per_example_jacobians(prob, 1)
    jac2 = jac1 if prob.same_inputs else per_example_jacobians(prob, 2)
    return [contract_jacobians(a, b, ax, prob.config.by_param)
            for a, b, ax in zip(jac1, jac2, prob.axes)]


def flops(cost_model, leaves) -> float:
    """s₁·R + s₂·R (one reverse pass per output entry and side, the per-example weight
    gradients at their measured rate: ``LinearMap.slow``) + 2·K·P(leaves)."""
    linear = cost_model.linear
    params = cost_model.parameters(leaves)
    return (cost_model.primal_passes(shared=True)
            + cost_model.reverse_passes(linear.reached(leaves) + linear.slow_gradients(leaves))
            + sum(2 * o.contraction * params for o in cost_model.outputs))


def working_set(cost_model, leaves) -> float:
    """x1's per-example Jacobians, and x2's of the largest leaf (XLA contracts each leaf's as
    the reverse pass gives it); when x2 is x1, the largest leaf's Jacobian and its transposed
    copy (the contraction's other operand) and half of the others (XLA's measured memory:
    bench/estimates.py); plus each side's reverse pass (its residuals and cotangents) and the
    flipped convolution kernels."""
    linear, m = cost_model.linear, cost_model
    tangents, residuals = linear.tangents(leaves), linear.residuals(leaves)
    s1, s2 = (sum(o.size1 for o in m.outputs), sum(o.size2 for o in m.outputs))
    params, largest = m.parameters(leaves), max(m.leaf_sizes[i] for i in leaves)
    if m.same_inputs:
        jacobians = s1 * (2 * largest + (params - largest) / 2)
        passes = m.examples1 * residuals + s1 * tangents
    else:
        jacobians = s1 * params + s2 * largest
        passes = (m.examples1 + m.examples2) * residuals + (s1 + s2) * tangents
    return float((jacobians + passes + linear.copies(leaves)) * m.itemsize)


def gram_side(prob: Problem) -> tuple[list, object]:
    """A block's per-example Jacobians (per output leaf, a pytree like params); static: their
    tree."""
    arrays, treedef = jax.tree.flatten(per_example_jacobians(prob, 1))
    return arrays, treedef


def gram_pair(config, static, arrays1, arrays2, hoist=None) -> list:
    """The kernel of two blocks' Jacobians."""
    jac1, jac2 = jax.tree.unflatten(static, arrays1), jax.tree.unflatten(static, arrays2)
    return [contract_jacobians(a, b, ax, config.by_param)
            for a, b, ax in zip(jac1, jac2, config.axes)]


register(Method(NAME, kernel, flops, working_set, gram=GramSides(gram_side, gram_pair),
                reverses_every_loop=True))
