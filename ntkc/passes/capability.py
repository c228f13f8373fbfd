"""Which methods can run a function: the while loops that reverse mode cannot go through.

Every method needs reverse-mode derivatives somewhere: ``jacobian`` builds J by ``jax.vjp``,
``ntvp`` applies J(x2)ᵀ by ``jax.vjp``, and ``structured`` pulls cotangents back through the
linear map after each parameter use. JAX cannot transpose a ``while`` loop (``lax.while_loop``,
or ``lax.fori_loop`` with traced bounds), so a loop whose floating-point carry depends on the
parameters blocks ``jacobian`` and ``ntvp`` (flagged ``reverses_every_loop`` in
``ntkc.methods.registry``). ``structured`` needs only the loops a cotangent
passes through: a loop into which parameters enter directly (its only tangent inputs are
parameter values) is a use, whose dense rule differentiates it in forward mode.

Derivatives of custom_vjp / custom_jvp functions come from the user's rules, not from their
bodies, so loops inside them are not looked at.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ntkc._compat import Literal, custom_derivative, inlinable_jaxpr, source_line, sub_jaxprs


class ReverseModeError(ValueError):
    """A ``while`` loop that the NTK would need to reverse-differentiate."""


def _is_float(v) -> bool:
    return jnp.issubdtype(v.aval.dtype, jnp.inexact)


def _raw(jaxpr):
    return getattr(jaxpr, "jaxpr", jaxpr)


def _eqn(eqn, ins: list[bool], found: list) -> list[bool]:
    """Records the blocking loops of one equation given which inputs depend on the parameters;
    returns which outputs do."""
    if not any(ins) or custom_derivative(eqn):
        return [any(ins)] * len(eqn.outvars)
    if eqn.primitive is lax.while_p:
        carried = ins[eqn.params["cond_nconsts"]:]  # body constants and carry
        if any(carried):
            found.append(eqn)
            return [True] * len(eqn.outvars)
        return [False] * len(eqn.outvars)
    sub = inlinable_jaxpr(eqn)
    if sub is not None:
        return _jaxpr(sub[0], ins, found)
    if eqn.primitive is lax.cond_p:  # operand 0 is the branch index
        outs = [False] * len(eqn.outvars)
        for branch in eqn.params["branches"]:
            outs = [a or b for a, b in zip(outs, _jaxpr(_raw(branch), ins[1:], found))]
        return outs
    if eqn.primitive is lax.scan_p:  # (consts, carry, xs) -> (carry, ys): the carry's dependence to a fixed point
        c0, nc = eqn.params["num_consts"], eqn.params["num_carry"]
        body, ins = _raw(eqn.params["jaxpr"]), list(ins)
        while True:
            outs = _jaxpr(body, ins, [])
            carry = [a or b for a, b in zip(ins[c0:c0 + nc], outs[:nc])]
            if carry == ins[c0:c0 + nc]:
                return _jaxpr(body, ins, found)
            ins[c0:c0 + nc] = carry
    for s in sub_jaxprs(eqn):  # anything else: every input of its sub-jaxprs may depend
        _jaxpr(_raw(s), [True] * len(_raw(s).invars), found)
    return [True] * len(eqn.outvars)


def _jaxpr(jaxpr, ins: list[bool], found: list) -> list[bool]:
    dep = {v for v, d in zip(jaxpr.invars, ins) if d and _is_float(v)}
    for eqn in jaxpr.eqns:
        flags = [not isinstance(v, Literal) and v in dep for v in eqn.invars]
        outs = _eqn(eqn, flags, found)
        dep.update(v for v, d in zip(eqn.outvars, outs) if d and _is_float(v))
    return [not isinstance(v, Literal) and v in dep for v in jaxpr.outvars]


def while_loops(closed, n_params: int) -> list:
    """The ``while`` equations of ``f``'s (closed) jaxpr, whose first ``n_params`` inputs are the
    parameter leaves, with a floating-point carry that depends on the parameters."""
    jaxpr = _raw(closed)
    found: list = []
    _jaxpr(jaxpr, [i < n_params for i in range(len(jaxpr.invars))], found)
    return found


def structured_loops(analysis) -> list:
    """The ``while`` equations the structured method would pull cotangents back through: in the
    linear map, after a parameter use (a loop whose tangent inputs are all parameter values is a
    use itself, differentiated forward by its dense rule)."""
    jaxpr = analysis.traced.jaxpr.jaxpr
    tangent_vars = set(analysis.traced.tangent_vars)
    for k in analysis.tangent:
        tangent_vars.update(jaxpr.eqns[k].outvars)
    found: list = []
    for k in sorted(analysis.tangent):
        eqn = jaxpr.eqns[k]
        through = [not isinstance(v, Literal) and v in tangent_vars and v not in analysis.chains
                   for v in eqn.invars]
        _eqn(eqn, through, found)
    return found


def error(loops: list, methods: str) -> ReverseModeError:
    """The error for blocking ``loops`` (as found above) and the methods they block."""
    where = "; ".join(sorted({source_line(e) or "(source line unknown)" for e in loops}))
    return ReverseModeError(
        f"ntkc: f calls lax.while_loop (or lax.fori_loop with traced bounds) at {where} with a "
        f"carry that depends on the parameters; the NTK by {methods} needs reverse-mode "
        "derivatives through it, and JAX cannot reverse-differentiate a while loop. Use lax.fori_loop with static "
        "(Python int) bounds, which lowers to a scan, or lax.scan. Forward mode (jax.jvp) does "
        "work through the loop: method='structured' handles a loop into which only the "
        "parameters themselves enter (not values computed from them), by its dense rule.")


def check(closed, n_params: int, method: str) -> None:
    """Raises :class:`ReverseModeError` before any work when ``f``'s jaxpr has a loop that
    blocks ``method`` (the name of one that reverses every loop:
    ``Method.reverses_every_loop``)."""
    loops = while_loops(closed, n_params)
    if loops:
        raise error(loops, f"method={method!r}")


def check_structured(analysis) -> None:
    """Raises :class:`ReverseModeError` when the structured method's cotangent pass would go
    through a while loop."""
    loops = structured_loops(analysis)
    if loops:
        raise error(loops, "method='structured' (its cotangent pass)")
