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

Cost. The guarded contractions (``dot_general``, convolutions) of the cotangent pass run under
``lax.cond`` on their predicate, so only the taken branch's run (a side's index is one scalar:
under ``vmap`` the conditional stays one); the elementwise ones run masked in every branch. A
parameter use that several branches make alike (same primitive, parameters and shapes, on a
parameter the ``cond`` receives) is computed once, on the taken branch's operands, so it is one
term of the kernel, not one per pair of branches; any other use in a branch is a term of its
own, an exact zero when its branch is not taken (computed all the same).
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


def _is_chain_eqn(eqn, c_in) -> bool:
    """A structure-only op on a parameter value alone (folded into its chain by the uses pass)."""
    return (is_chain(eqn.primitive) and [i for i, c in enumerate(c_in) if c] == [0]
            and len(eqn.outvars) == 1 and _is_float(eqn.outvars[0]))


def _run(jaxpr, consts, args, tangent_in, chain_in, g, *, primal_only=False, env=None,
         given=None):
    """Evaluates ``jaxpr`` on ``args`` with its tangent conditionals flattened and, under the
    predicate ``g`` (None: not in a branch), the equations that read primal values guarded.
    ``tangent_in`` / ``chain_in``: which inputs depend on the parameter tangents / are a
    parameter's value (as in ``ntkc.passes.uses``).

    ``primal_only``: evaluate only the equations that do not depend on the tangents, and return
    ``(env, tangent vars, chain vars)``; ``env``: values computed so (not computed again);
    ``given``: outputs of equations computed elsewhere (merged uses), by ``id(eqn)``.
    Otherwise returns the outputs and their two flags."""
    env = dict(env or {})
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    tangent = {v for v, t in zip(jaxpr.invars, tangent_in) if t}
    chain = {v for v, c in zip(jaxpr.invars, chain_in) if c}
    for eqn in jaxpr.eqns:
        t_in = [_flag(tangent, v) for v in eqn.invars]
        if not any(t_in):
            if not all(v in env for v in eqn.outvars):
                ins = [read(env, v) for v in eqn.invars]
                sub = call_jaxpr(eqn)
                env.update(zip(eqn.outvars, bind(eqn, ins) if sub is None else
                               _run(sub[0], sub[1], ins, t_in, t_in, g)[0]))
            continue
        c_in = [_flag(chain, v) for v in eqn.invars]
        sub = call_jaxpr(eqn)
        if primal_only:  # the flags only
            if sub is None and eqn.primitive is not lax.cond_p and _is_chain_eqn(eqn, c_in):
                chain.update(eqn.outvars)
            tangent.update(eqn.outvars)
            continue
        ins = [read(env, v) for v in eqn.invars]
        t_out = c_out = None
        if given is not None and id(eqn) in given:
            outs = given[id(eqn)]
        elif sub is not None:
            outs, t_out, c_out = _run(sub[0], sub[1], ins, t_in, c_in, g)
        elif eqn.primitive is lax.cond_p:
            outs, t_out, c_out = _cond(eqn, ins, t_in, c_in, g)
        elif _is_chain_eqn(eqn, c_in):
            outs, c_out = bind(eqn, ins), [True]
        elif g is not None and not all(t_in):
            # reads a residual, or a constant (a literal: h / 0 turns a zero cotangent into NaN)
            outs = guard(g, eqn, ins)
        else:
            outs = bind(eqn, ins)
        env.update(zip(eqn.outvars, outs))
        tangent.update(v for v, t in zip(eqn.outvars, t_out or [True] * len(outs)) if t)
        chain.update(v for v, c in zip(eqn.outvars, c_out or [False] * len(outs)) if c)
    if primal_only:
        return env, tangent, chain
    outs = [read(env, v) for v in jaxpr.outvars]
    return outs, [_flag(tangent, v) for v in jaxpr.outvars], [_flag(chain, v) for v in jaxpr.outvars]


def _mergeable(jaxpr, tangent: set, chain: set) -> list:
    """``(eqn, signature)`` of a branch's parameter uses that another branch may share: a use of
    a parameter value the ``cond`` receives, with no other tangent operand. The signature: the
    primitive, its parameters, the operands' shapes (literals by value) and which of the
    ``cond``'s operands is the parameter."""
    position = {v: i for i, v in enumerate(jaxpr.invars)}
    out = []
    for eqn in jaxpr.eqns:
        c_in = [_flag(chain, v) for v in eqn.invars]
        t_in = [_flag(tangent, v) for v in eqn.invars]
        if (not any(c_in) or c_in != t_in or _is_chain_eqn(eqn, c_in)
                or eqn.primitive is lax.cond_p or call_jaxpr(eqn) is not None
                or not all(v in position for v, c in zip(eqn.invars, c_in) if c)):
            continue
        operands = tuple(("p", position[v]) if c else ("literal", repr(v.val))
                         if isinstance(v, Literal) else ("value", v.aval.str_short())
                         for v, c in zip(eqn.invars, c_in))
        params = tuple((k, repr(p)) for k, p in sorted(eqn.params.items()))
        out.append((eqn, (eqn.primitive, params, operands)))
    return out


def _merged_uses(branches, envs, flags, index, g) -> list[dict]:
    """The parameter uses that several branches make alike, each computed once on the taken
    branch's operands (``select_n`` by the index) and guarded by "one of those branches is
    taken": one term in the kernel instead of one per pair of branches. Returns, per branch,
    the outputs of its merged equations by ``id(eqn)``."""
    slots: dict = {}
    for k, branch in enumerate(branches):
        seen: dict = {}
        for eqn, signature in _mergeable(branch.jaxpr, *flags[k]):
            j = seen[signature] = seen.get(signature, -1) + 1
            slots.setdefault((signature, j), {})[k] = eqn
    given = [{} for _ in branches]
    for (signature, _), instances in slots.items():
        if len(instances) < 2:
            continue
        first = next(iter(instances.values()))
        args = []
        for i, v in enumerate(first.invars):
            values = [read(envs[k], instances[k].invars[i]) if k in instances
                      else read(envs[next(iter(instances))], first.invars[i])
                      for k in range(len(branches))]
            same = all(x is values[0] for x in values) or isinstance(v, Literal)
            args.append(values[0] if same else lax.select_n(index, *values))
        if all(kind == "p" for kind, _ in signature[2]):  # on parameter values alone (a
            outs = bind(first, args)  # broadcast of a bias): the same value in every branch
        else:
            taken = jnp.isin(index, jnp.array(sorted(instances)))
            outs = guard(taken if g is None else g & taken, first, args)
        for k, eqn in instances.items():
            given[k][id(eqn)] = outs
    return given


def _cond(eqn, ins, t_in, c_in, g):
    """A tangent ``cond``: every branch under its predicate, outputs selected by the index."""
    branches = eqn.params["branches"]
    index, ops = ins[0], ins[1:]
    if not is_traced(index) or len(branches) == 1:  # a constant index: the taken branch only
        k = min(max(int(index), 0), len(branches) - 1) if len(branches) > 1 else 0
        return _run(branches[k].jaxpr, branches[k].consts, ops, t_in[1:], c_in[1:], g)
    # in range even when an enclosing branch is not taken (its index is then garbage)
    index = jnp.clip(index, 0, len(branches) - 1).astype(jnp.int32)
    primal = [_run(b.jaxpr, b.consts, ops, t_in[1:], c_in[1:], g, primal_only=True)
              for b in branches]
    given = _merged_uses(branches, [p[0] for p in primal], [p[1:] for p in primal], index, g)
    runs = []
    for k, branch in enumerate(branches):
        taken = index == k if g is None else g & (index == k)
        runs.append(_run(branch.jaxpr, branch.consts, ops, t_in[1:], c_in[1:], taken,
                         env=primal[k][0], given=given[k]))
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
