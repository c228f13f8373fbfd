"""Inline call-like sub-jaxprs (jit, closed_call, remat, custom_jvp/vjp, and primitives declared
with ``ntkc.register_call``) into one flat jaxpr.

Done by re-tracing: evaluate the jaxpr, recursing into inlinable equations instead of binding them,
under ``make_jaxpr``. Loops and conditionals (scan, while, cond) stay as they are; the uses pass
treats a parameter entering one of them with the dense rule (short scans are unrolled by
``ntkc.passes.unroll``, tangent conditionals flattened by ``ntkc.passes.conds``). A custom_vjp function's linear part
(``custom_lin``, transposed by the user's bwd) has no sub-jaxpr and stays as well.
"""

from __future__ import annotations

import jax

from ntkc._compat import ClosedJaxpr, bind, inlinable_jaxpr, read
from ntkc.rules.registry import registered_call


def call_jaxpr(eqn):
    """The sub-jaxpr of a call-like equation as ``(jaxpr, consts)``, or None: JAX's own calls
    and the primitives registered with ``ntkc.register_call``."""
    sub = registered_call(eqn)
    return sub if sub is not None else inlinable_jaxpr(eqn)


def eval_inlined(jaxpr, consts, args) -> list:
    """Evaluates a jaxpr on ``args`` (arrays or tracers), recursing into call-like equations."""
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        ins = [read(env, v) for v in eqn.invars]
        sub = call_jaxpr(eqn)
        outs = eval_inlined(sub[0], sub[1], ins) if sub is not None else bind(eqn, ins)
        env.update(zip(eqn.outvars, outs))
    return [read(env, v) for v in jaxpr.outvars]


def inline(closed: ClosedJaxpr) -> ClosedJaxpr:
    """A ClosedJaxpr computing the same function with call-like equations inlined."""
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
    return jax.make_jaxpr(lambda *a: eval_inlined(closed.jaxpr, closed.consts, a))(*avals)
