"""Hoist the parameter uses out of the rolled loops of the linear map (``lax.scan`` longer than
:data:`ntkc.passes.unroll.MAX_LENGTH`), so that they get structured rules while the loop stays
rolled: the program, and its compile time, do not grow with the loop's length.

In the linear map, a parameter's tangent enters a scan as a constant (weights closed over, as an
RNN cell's) or as a scanned-over input (stacked layers, one slice per iteration). The body is
linear in the tangents, so each equation that consumes a parameter has only primal operands
besides it, none of which depends on the carry. Every equation of the body that depends on a
parameter but not on the carry is computed for all iterations at once, outside the loop (by
``jax.vmap`` over the scanned inputs, the constants unbatched), and its results enter the loop as
new scanned inputs. Outside the loop these equations are ordinary uses: a stacked ``dot_general``
(batched over iterations: one term summed over iterations, as the unrolled stack's per-layer
terms), a ``dot_general`` of the stacked layer inputs with the shared weights (the weight-shared
sum over every pair of iterations, contracted in whatever order ``ntkc.passes.path`` finds
cheapest, per-example Jacobian included), and so on; a use without a rule takes the dense rule of
that equation alone. The loop that is left is part of the downstream linear map: the cotangent
pass transposes it into a rolled reverse scan that carries the cotangents of the carry.

A parameter value that the loop itself reads (a bias added to a value that depends on the carry,
a learned initial carry) enters through a use as well: a broadcast over the iterations for a
constant, an identity (``x * 1``) for a scanned-over input or an initial carry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ntkc._compat import Literal, bind, read
from ntkc.passes.inline import inline
from ntkc.passes.uses import find_uses
from ntkc.rules import is_chain
from ntkc.trace import Traced

# Scans nested in a hoisted body come out hoisted (vmapped) too; each round handles one level.
MAX_ROUNDS = 8


def _vars(atoms) -> list:
    return [v for v in atoms if not isinstance(v, Literal)]


def _identity_use(x):
    """``x`` through an equation that has a rule (identity), so that the loop reads a value
    computed from the parameter, not the parameter itself."""
    return lax.mul(x, np.ones((), x.dtype))


class _Body:
    """A scan body split into the part computed outside the loop and the part left in it.

    Attributes:
      hoisted: indices of the body's equations computed for all iterations at once.
      loop: indices of the equations left in the loop (those its outputs need).
      boundary: the values computed outside that the loop reads, in order.
      stacked: per boundary value, whether it enters as a scanned-over input (else a constant).
      wrap: per boundary value, whether it is a parameter value itself (or a bijection of one)
        that varies with the iteration: it enters through :func:`_identity_use`.
    """

    def __init__(self, body, n_consts: int, n_carry: int, sources: set[int]):
        jaxpr = body.jaxpr
        carry_in = jaxpr.invars[n_consts:n_consts + n_carry]
        xs_in = jaxpr.invars[n_consts + n_carry:]
        source = {jaxpr.invars[i] for i in sources}
        carried, from_param, batched = set(carry_in), set(source), set(xs_in)
        chain_like = set(source)
        hoisted = []
        for j, eqn in enumerate(jaxpr.eqns):
            ins = _vars(eqn.invars)
            on_carry = any(v in carried for v in ins)
            on_param = any(v in from_param for v in ins)
            if on_carry:
                carried.update(eqn.outvars)
            if on_param:
                from_param.update(eqn.outvars)
            if any(v in batched for v in ins):
                batched.update(eqn.outvars)
            if on_param and not on_carry:
                hoisted.append(j)
                chained = [i for i, v in enumerate(eqn.invars) if v in chain_like]
                if (is_chain(eqn.primitive) and chained == [0] and len(eqn.outvars) == 1
                        and jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.inexact)):
                    chain_like.add(eqn.outvars[0])  # as ntkc.passes.uses folds it into a chain
        defined_outside = source | {v for j in hoisted for v in jaxpr.eqns[j].outvars}
        self.hoisted = set(hoisted)
        needed = set(_vars(jaxpr.outvars))
        loop = []
        for j in reversed(range(len(jaxpr.eqns))):
            eqn = jaxpr.eqns[j]
            if j not in self.hoisted and any(v in needed for v in eqn.outvars):
                loop.append(j)
                needed.update(_vars(eqn.invars))
        self.loop = loop[::-1]
        self.boundary = [v for v in dict.fromkeys(
            [v for j in self.loop for v in _vars(jaxpr.eqns[j].invars)] + _vars(jaxpr.outvars))
            if v in defined_outside]
        self.wrap = [v in chain_like and v in batched for v in self.boundary]
        self.stacked = [v in batched or v in chain_like for v in self.boundary]
        # the hoisted equations (and their primal inputs) that the boundary values need
        needed, outside = set(self.boundary), []
        for j in reversed(range(len(jaxpr.eqns))):
            eqn = jaxpr.eqns[j]
            if any(v in needed for v in eqn.outvars):
                outside.append(j)
                needed.update(_vars(eqn.invars))
        self.outside = outside[::-1]
        constant = set(chain_like) - batched
        self.rows = frozenset(j for j in self.outside if _row_slice(jaxpr.eqns[j], constant))


def _run(jaxpr, indices, env, rows=frozenset()):
    """Evaluates the equations ``indices`` into ``env``; those in ``rows`` (see
    :func:`_row_slice`) as a gather of one row."""
    for j in indices:
        eqn = jaxpr.eqns[j]
        args = [read(env, v) for v in eqn.invars]
        env.update(zip(eqn.outvars, _gather_row(*args) if j in rows else bind(eqn, args)))
    return env


def _row_slice(eqn, unbatched_params) -> bool:
    """``w[i]`` of stacked weights closed over by the loop, ``i`` from the iteration (a
    ``fori_loop`` over layers): a ``dynamic_slice`` of one row at a traced index."""
    if eqn.primitive is not lax.dynamic_slice_p or eqn.invars[0] not in unbatched_params:
        return False
    # whole along the other axes, where dynamic_slice clamps every start index to 0
    shape = eqn.invars[0].aval.shape
    return tuple(eqn.params["slice_sizes"]) == (1,) + tuple(shape[1:])


def _gather_row(operand, start, *_):
    """``dynamic_slice(operand, (start, ...), (1, ...))`` as a gather of one row (clamped
    like dynamic_slice): batched over the iterations it is a row lookup, which has a rule
    (vmapped, ``dynamic_slice`` becomes a gather of every index that has none)."""
    dims = lax.GatherDimensionNumbers(offset_dims=tuple(range(1, operand.ndim)),
                                      collapsed_slice_dims=(0,), start_index_map=(0,))
    ids = jnp.reshape(start, (1, 1))
    return [lax.gather(operand, ids, dims, (1,) + operand.shape[1:],
                       mode=lax.GatherScatterMode.CLIP)]


def _hoisted_scan(eqn, args: list, sources: set[int]) -> list:
    """The outputs of a scan equation whose operands ``sources`` are parameter values: their
    uses computed for all iterations outside the loop, the rest in a rolled ``lax.scan``."""
    p = eqn.params
    n_consts, n_carry, length = p["num_consts"], p["num_carry"], p["length"]
    body = inline(p["jaxpr"])
    jaxpr = body.jaxpr
    carry_sources = {i for i in sources if n_consts <= i < n_consts + n_carry}
    args = [_identity_use(a) if i in carry_sources else a for i, a in enumerate(args)]
    split = _Body(body, n_consts, n_carry, sources - carry_sources)
    consts, carry, xs = (args[:n_consts], args[n_consts:n_consts + n_carry],
                         args[n_consts + n_carry:])
    const_in, xs_in = jaxpr.invars[:n_consts], jaxpr.invars[n_consts + n_carry:]

    def outside(consts, xs):
        env = dict(zip(jaxpr.constvars, body.consts))
        env.update(zip(const_in, consts))
        env.update(zip(xs_in, xs))
        _run(jaxpr, split.outside, env, split.rows)
        return [env[v] for v in split.boundary]

    values = jax.vmap(outside, in_axes=(None, 0), out_axes=[0 if s else None for s in split.stacked],
                      axis_size=length)(consts, xs)
    values = [_identity_use(v) if w else v for v, w in zip(values, split.wrap)]
    fixed = {v: x for v, x, s in zip(split.boundary, values, split.stacked) if not s}
    stacked = [(v, x) for v, x, s in zip(split.boundary, values, split.stacked) if s]
    source_vars = {jaxpr.invars[i] for i in sources}
    # the loop's own inputs: what its equations read, parameter values excluded
    read_in_loop = set(_vars(jaxpr.outvars)) | {
        v for j in split.loop for v in _vars(jaxpr.eqns[j].invars)}
    loop_consts = [(v, c) for v, c in zip(const_in, consts)
                   if v in read_in_loop and v not in source_vars]
    loop_xs = [(v, x) for v, x in zip(xs_in, xs) if v in read_in_loop and v not in source_vars]
    loop_xs += stacked

    def step(carry, x):
        env = dict(zip(jaxpr.constvars, body.consts))
        env.update(loop_consts)
        env.update(fixed)
        env.update(zip(jaxpr.invars[n_consts:n_consts + n_carry], carry))
        env.update(zip([v for v, _ in loop_xs], x))
        _run(jaxpr, split.loop, env)
        outs = [read(env, v) for v in jaxpr.outvars]
        return outs[:n_carry], outs[n_carry:]

    carry, ys = lax.scan(step, carry, [x for _, x in loop_xs], length=length,
                         reverse=p["reverse"], unroll=p["unroll"])
    return [*carry, *ys]


def hoist_scan_uses(traced: Traced) -> Traced:
    """``traced`` with the parameter uses of its scans moved out of the loops (see the module
    docstring); the same function. Scans into which no parameter value enters are kept."""
    for _ in range(MAX_ROUNDS):
        analysis = find_uses(traced)
        closed = traced.jaxpr
        targets = {}
        for k, indices in analysis.uses_by_eqn.items():
            eqn = closed.jaxpr.eqns[k]
            # float parameters only: an integer leaf's tangent (float0) carries nothing
            sources = {analysis.uses[i].operand for i in indices
                       if jnp.issubdtype(eqn.invars[analysis.uses[i].operand].aval.dtype,
                                         jnp.inexact)}
            if eqn.primitive is lax.scan_p and sources:
                targets[k] = sources
        if not targets:
            return traced

        def evaluate(*args):
            env = dict(zip(closed.jaxpr.constvars, closed.consts))
            env.update(zip(closed.jaxpr.invars, args))
            for k, eqn in enumerate(closed.jaxpr.eqns):
                ins = [read(env, v) for v in eqn.invars]
                outs = _hoisted_scan(eqn, ins, targets[k]) if k in targets else bind(eqn, ins)
                env.update(zip(eqn.outvars, outs))
            return [read(env, v) for v in closed.jaxpr.outvars]

        avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
        traced = Traced(jax.make_jaxpr(evaluate)(*avals), traced.n_params, traced.n_inputs)
    return traced
