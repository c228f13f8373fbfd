"""Flatten the conditionals (``lax.cond``, ``lax.switch``) through which the parameter tangents
flow, so that the parameter uses inside their branches get structured rules instead of the
dense rule of the whole ``cond``.

In the linearized jaxpr a conditional is two ``cond`` equations on the same branch index: one
computes the primal values and the residuals, the other the tangents from them. Only the
taken branch's residuals are computed; the other branches' slots are uninitialized memory.
The tangent ``cond`` is rewritten (by re-tracing, like ``ntkc.passes.inline``) as every branch
run one after the other, and each output the taken branch's value, selected by ``select_n``
(exact, whatever the other cases hold). The index is one scalar per side: under ``vmap_axes``
a branch that depended on the example would couple examples, which
``ntkc.passes.independence`` refuses; so the branch a side takes is the same for all its
examples, and the kernel is that of the taken branches.

The untaken branches run on garbage, so every equation of a branch that reads a primal value
(or a constant: ``h / 0``) is wrapped in a ``guarded`` equation (``ntkc.rules.guarded``) with the branch's predicate: its
values and its transposed cotangents are exact zeros when the branch is not taken
(``jnp.where``, never a product), and so are the factors of its rule. The other equations of a
branch (chains on a parameter, sums, reshapes of tangents) read tangents only: zero cotangents
in, zero cotangents out. Nested conditionals are flattened the same way, under the conjunction of
their predicates; calls inside a branch are inlined. A conditional with a constant index is its
taken branch.

Cost: every branch's cotangent pass runs (the sum of the branches, not the taken one), and each
parameter use in a branch is a term of its own, zero when not taken.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ntkc._compat import Literal, bind, is_traced, read
from ntkc.passes.inline import call_jaxpr
from ntkc.rules import is_chain
from ntkc.rules.guarded import guard
from ntkc.trace import Traced


def _flag(flags: set, v) -> bool:
    return not isinstance(v, Literal) and v in flags


def _is_float(v) -> bool:
    return jnp.issubdtype(v.aval.dtype, jnp.inexact)


def _run(jaxpr, consts, args, tangent_in, chain_in, g):
    """Evaluates ``jaxpr`` on ``args`` with its tangent conditionals flattened and, under the
    predicate ``g`` (None: not in a branch), the equations that read primal values guarded.
    ``tangent_in`` / ``chain_in``: which inputs depend on the parameter tangents / are a
    parameter's value (as in ``ntkc.passes.uses``). Returns the outputs and their two flags."""
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    tangent = {v for v, t in zip(jaxpr.invars, tangent_in) if t}
    chain = {v for v, c in zip(jaxpr.invars, chain_in) if c}
    for eqn in jaxpr.eqns:
        ins = [read(env, v) for v in eqn.invars]
        t_in = [_flag(tangent, v) for v in eqn.invars]
        c_in = [_flag(chain, v) for v in eqn.invars]
        sub = call_jaxpr(eqn)
        if not any(t_in):
            outs = _run(sub[0], sub[1], ins, t_in, c_in, g)[0] if sub is not None else bind(eqn, ins)
        elif sub is not None or eqn.primitive is lax.cond_p:
            outs, t_out, c_out = (_run(sub[0], sub[1], ins, t_in, c_in, g) if sub is not None
                                  else _cond(eqn, ins, t_in, c_in, g))
            env.update(zip(eqn.outvars, outs))
            tangent.update(v for v, t in zip(eqn.outvars, t_out) if t)
            chain.update(v for v, c in zip(eqn.outvars, c_out) if c)
            continue
        else:
            is_chain_eqn = (is_chain(eqn.primitive) and [i for i, c in enumerate(c_in) if c] == [0]
                            and len(eqn.outvars) == 1 and _is_float(eqn.outvars[0]))
            # a constant too (a literal: h / 0) can turn a zero cotangent into NaN
            reads_primal = not all(t_in)
            if g is not None and reads_primal and not is_chain_eqn:
                outs = guard(g, eqn, ins)
            else:
                outs = bind(eqn, ins)
            if is_chain_eqn:
                chain.update(eqn.outvars)
            tangent.update(eqn.outvars)
        env.update(zip(eqn.outvars, outs))
    outs = [read(env, v) for v in jaxpr.outvars]
    return outs, [_flag(tangent, v) for v in jaxpr.outvars], [_flag(chain, v) for v in jaxpr.outvars]


def _cond(eqn, ins, t_in, c_in, g):
    """A tangent ``cond``: every branch under its predicate, outputs selected by the index."""
    branches = eqn.params["branches"]
    index, ops = ins[0], ins[1:]
    if not is_traced(index) or len(branches) == 1:  # a constant index: the taken branch only
        k = min(max(int(index), 0), len(branches) - 1) if len(branches) > 1 else 0
        return _run(branches[k].jaxpr, branches[k].consts, ops, t_in[1:], c_in[1:], g)
    # in range even when an enclosing branch is not taken (its index is then garbage)
    index = jnp.clip(index, 0, len(branches) - 1).astype(jnp.int32)
    runs = []
    for k, branch in enumerate(branches):
        taken = index == k if g is None else g & (index == k)
        runs.append(_run(branch.jaxpr, branch.consts, ops, t_in[1:], c_in[1:], taken))
    outs = []
    for j, v in enumerate(eqn.outvars):
        cases = [jnp.broadcast_to(jnp.asarray(r[0][j], v.aval.dtype), v.aval.shape) for r in runs]
        outs.append(lax.select_n(index, *cases))
    # a selection of parameter values is a use (select_n's rule), not a chain
    return outs, [any(r[1][j] for r in runs) for j in range(len(outs))], [False] * len(outs)


def flatten_conds(traced: Traced) -> Traced:
    """``traced`` with its tangent conditionals flattened (see the module docstring)."""
    closed = traced.jaxpr
    tangent = set(traced.tangent_vars)
    found = False
    for eqn in closed.jaxpr.eqns:
        if any(_flag(tangent, v) for v in eqn.invars):
            tangent.update(eqn.outvars)
            found = found or eqn.primitive is lax.cond_p
    if not found:
        return traced
    n, jaxpr = traced.n_params, closed.jaxpr
    flags = [n <= i < 2 * n for i in range(len(jaxpr.invars))]

    def evaluate(*args):
        return _run(jaxpr, closed.consts, args, flags, flags, None)[0]

    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in jaxpr.invars]
    return Traced(jax.make_jaxpr(evaluate)(*avals), traced.n_params, traced.n_inputs)
