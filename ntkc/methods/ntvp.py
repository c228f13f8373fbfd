"""NTK-vector products: Θ e = J(x1) (J(x2)ᵀ e) for each basis vector e of f(x2)'s output.

Cost N²·O·[FP]. Trace and diagonal axes are applied while computing: each product J(x1) v is
reduced at once to the entries its basis vector pairs with (the same index along traced and
diagonal axes), so the O1 x O2 block is never stored; with ``vmap_axes`` a diagonal or traced
example axis visits N example pairs instead of N².
"""

from __future__ import annotations

import math
import string

import jax
import jax.numpy as jnp

from ntkc._axes import KernelAxes
from ntkc._compat import forward_mode_blocked
from ntkc._leaves import restrict
from ntkc._problem import Problem
from ntkc.methods._batch import place_example_axes
from ntkc.methods.registry import Method, register
from ntkc.passes import capability

NAME = "ntvp"


def _jvp(f, params, transpose: bool):
    """``v -> J v`` for ``f: params -> array``: forward mode, or with ``transpose`` (``f`` holds
    a custom_vjp function: no forward mode through it) the transpose of its VJP, in which the
    user's bwd is transposed."""
    if not transpose:
        return lambda v: jax.jvp(f, (params,), (v,))[1]
    out, vjp = jax.vjp(f, params)
    transposed = jax.linear_transpose(vjp, out)
    return lambda v: transposed((v,))[0]


def _pair_kernel(f1, f2, params, axes: KernelAxes, by_param: bool = False,
                 transpose: bool = False):
    """Θ for one output leaf given ``f1, f2: params -> that leaf`` (with ``by_param``, the list
    of each parameter leaf's part: one JVP per leaf, of ``f1`` restricted to that leaf;
    ``transpose``: JVPs as transposed VJPs)."""
    out2, vjp2 = jax.vjp(f2, params)
    n = math.prod(axes.shape2)
    paired = set(axes.trace) | set(axes.diagonal)
    if by_param:  # per leaf, the JVP of f1 restricted to that leaf: its part of the kernel
        jvps = []
        for leaf in range(len(jax.tree.leaves(params))):
            g, group = restrict(f1, params, [leaf])
            jvp = _jvp(g, group, transpose)
            jvps.append(lambda v, jvp=jvp, leaf=leaf: jvp([jax.tree.leaves(v)[leaf]]))
    else:
        jvps = [_jvp(f1, params, transpose)]

    def column(i):
        e = jnp.zeros((n,), out2.dtype).at[i].set(1).reshape(axes.shape2)
        (v,) = vjp2(e)
        index = jnp.unravel_index(i, axes.shape2) if axes.shape2 else ()
        select = tuple(index[a] if a in paired else slice(None) for a in range(axes.ndim))
        return [jvp(v)[select] for jvp in jvps]

    columns = jax.vmap(column)(jnp.arange(n))
    free1 = [axes.shape1[a] for a in axes.free]
    l1, l2, lo = axes.labels()
    l1_free = "".join(l1[a] for a in axes.free)
    terms = [jnp.einsum(f"{l2}{l1_free}->{lo}", c.reshape(tuple(axes.shape2) + tuple(free1)))
             / axes.trace_size for c in columns]
    return terms if by_param else terms[0]


def _leaf(fn, k):
    return lambda *args: fn(*args)[k]


def kernel(prob: Problem) -> list:
    """Θ per output leaf (a flat list) by NTK-vector products."""
    jaxpr = jax.make_jaxpr(prob.full_fn(1))(prob.params)
    capability.check(jaxpr, len(jax.tree.leaves(prob.params)), NAME)
    transpose = forward_mode_blocked(jaxpr)
    out = []
    for k, axes in enumerate(prob.axes):
        if prob.batching is None:
            f1, f2 = _leaf(prob.full_fn(1), k), _leaf(prob.full_fn(2), k)
            out.append(_pair_kernel(f1, f2, prob.params, axes, prob.config.by_param, transpose))
            continue
        b = prob.batching.outputs[k]
        example_axes = axes.drop(b)
        g1, g2 = _leaf(prob.example_fn(1), k), _leaf(prob.example_fn(2), k)
        in1, ax1 = prob.batched_inputs(1)
        in2, ax2 = prob.batched_inputs(2)

        def pair(e1, e2, g1=g1, g2=g2, example_axes=example_axes):
            return _pair_kernel(
                lambda p: g1(p, e1), lambda p: g2(p, e2), prob.params, example_axes,
                prob.config.by_param, transpose
            )

        if b in axes.free:
            inner = jax.vmap(pair, in_axes=(None, ax2))
            theta = jax.vmap(inner, in_axes=(ax1, None))(in1, in2)
            out.append(jax.tree.map(lambda t: place_example_axes(t, axes, b, 2), theta))
        else:
            theta = jax.vmap(pair, in_axes=(ax1, ax2))(in1, in2)
            if b in axes.diagonal:
                out.append(jax.tree.map(lambda t: place_example_axes(t, axes, b, 1), theta))
            else:
                out.append(jax.tree.map(lambda t: jnp.mean(t, axis=0), theta))
    return out


def flops(cost_model, leaves) -> float:
    """s₂·R + N₁·s₂·R: a VJP per entry of f(x2), a JVP per such entry and x1 example
    (N₁·s₂ → s₂ when the example axis is traced or diagonal); both sides' primal passes even
    when x2 is x1."""
    reached = cost_model.linear.reached(leaves)
    return cost_model.primal_passes(shared=False) + sum(
        o.size2 * cost_model.on_x2(reached)
        + (cost_model.examples1 if o.pairs_all else 1) * o.size2 * reached
        for o in cost_model.outputs)


def working_set(cost_model, leaves) -> float:
    """The VJPs of every entry of f(x2) (s₂·P), then the larger of the two passes: the VJPs'
    (x2's residuals and s₂ cotangents) and the batched JVPs' (x1's residuals and a tangent per
    entry of f(x2) and x1 example, N₁·s₂ of them: on conv nets the most), plus the flipped
    convolution kernels."""
    linear, m = cost_model.linear, cost_model
    tangents, residuals = linear.tangents(leaves), linear.residuals(leaves)
    entries = sum(o.size2 for o in m.outputs)
    jvps = sum((m.examples1 if o.pairs_all else 1) * o.size2 for o in m.outputs)
    passes = max(m.examples2 * residuals + entries * tangents,
                 m.examples1 * residuals + jvps * tangents)
    return float((entries * m.parameters(leaves) + linear.copies(leaves) + passes) * m.itemsize)


# No per-example part to reuse in a Gram matrix: every pair of examples costs its own passes.
register(Method(NAME, kernel, flops, working_set, reverses_every_loop=True))
