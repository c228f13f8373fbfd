"""Unroll short loops through which the parameter tangents flow, so that the parameter uses
inside their bodies get structured rules instead of the dense rule of the whole loop.

A ``lax.scan`` over stacked layers (Flax ``nn.scan``, Equinox's ``filter_vmap`` + ``scan``) feeds
each iteration a slice of the stacked weights: unrolled, each slice is a static ``slice`` of the
parameter (a selection, folded into the use's chain by ``ntkc.passes.uses``), so the NTK gets one
term per layer, as for the unrolled stack, and the terms of different layers vanish (their
selections are disjoint). Weights closed over by the loop (an RNN cell's) are used once per
iteration: the weight-shared sum over pairs of iterations. The carry's cotangents flow back
through the unrolled iterations. Done by re-tracing, like ``ntkc.passes.inline``. Loops longer
than :data:`MAX_LENGTH` stay rolled (unrolled, the program and its compile time would grow with
the length): ``ntkc.passes.rolled`` moves their parameter uses out of the loop instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ntkc._compat import Literal, bind, read
from ntkc.passes.inline import eval_inlined
from ntkc.passes.rolled import hoist_scan_uses
from ntkc.trace import Traced

MAX_LENGTH = 32


def _scans_to_unroll(traced: Traced) -> set[int]:
    """Indices of the short top-level scans, when a parameter tangent flows into one of them:
    all of them, so that the primal loop that computes the residuals is unrolled with its
    tangent loop (as in the unrolled model: no stacked residuals to slice)."""
    jaxpr = traced.jaxpr.jaxpr
    tangent, short, any_tangent = set(traced.tangent_vars), set(), False
    for k, eqn in enumerate(jaxpr.eqns):
        is_short = eqn.primitive is lax.scan_p and 0 < eqn.params["length"] <= MAX_LENGTH
        if is_short:
            short.add(k)
        if any(not isinstance(v, Literal) and v in tangent for v in eqn.invars):
            tangent.update(eqn.outvars)
            any_tangent = any_tangent or is_short
    return short if any_tangent else set()


def _unrolled(eqn, args: list) -> list:
    """The outputs of a scan equation, computed one iteration at a time."""
    p = eqn.params
    body, n_consts, n_carry = p["jaxpr"], p["num_consts"], p["num_carry"]
    consts, carry, xs = args[:n_consts], args[n_consts:n_consts + n_carry], args[n_consts + n_carry:]
    steps = range(p["length"] - 1, -1, -1) if p["reverse"] else range(p["length"])
    ys = []
    for i in steps:
        outs = eval_inlined(body.jaxpr, body.consts, [*consts, *carry, *[
            lax.index_in_dim(x, i, 0, keepdims=False) for x in xs]])
        carry, y = list(outs[:n_carry]), outs[n_carry:]
        ys.append(y)
    if p["reverse"]:
        ys.reverse()
    n_ys = len(eqn.outvars) - n_carry
    return carry + [jnp.stack([y[j] for y in ys]) for j in range(n_ys)]


def unroll_scans(traced: Traced) -> Traced:
    """``traced`` with its short tangent scans unrolled (their bodies' calls inlined) and the
    parameter uses of the long ones hoisted out of their loops (``ntkc.passes.rolled``)."""
    return hoist_scan_uses(_unroll_short(traced))


def _unroll_short(traced: Traced) -> Traced:
    targets = _scans_to_unroll(traced)
    if not targets:
        return traced
    closed = traced.jaxpr

    def evaluate(*args):
        env = dict(zip(closed.jaxpr.constvars, closed.consts))
        env.update(zip(closed.jaxpr.invars, args))
        for k, eqn in enumerate(closed.jaxpr.eqns):
            ins = [read(env, v) for v in eqn.invars]
            outs = _unrolled(eqn, ins) if k in targets else bind(eqn, ins)
            env.update(zip(eqn.outvars, outs))
        return [read(env, v) for v in closed.jaxpr.outvars]

    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
    return Traced(jax.make_jaxpr(evaluate)(*avals), traced.n_params, traced.n_inputs)
