"""The only module that knows about JAX version differences and jaxpr internals.

Everything here uses ``jax.extend.core`` (public) but relies on parameter names of particular
primitives, which have changed between releases.
"""

from __future__ import annotations

from jax.extend import core as jex_core

Literal = jex_core.Literal
Var = jex_core.Var
ClosedJaxpr = jex_core.ClosedJaxpr
Jaxpr = jex_core.Jaxpr

# Call-like primitives whose sub-jaxpr computes exactly the equation's outputs from its inputs,
# so they can be inlined. Names across JAX 0.9-0.12 (pjit was renamed jit; remat is checkpoint).
_INLINE_PARAM = {
    "pjit": "jaxpr",
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
}


def inlinable_jaxpr(eqn):
    """The sub-jaxpr of a call-like equation as ``(jaxpr, consts)``, or None."""
    key = _INLINE_PARAM.get(eqn.primitive.name)
    if key is None:
        return None
    sub = eqn.params.get(key)
    if sub is None and eqn.primitive.name == "custom_vjp_call":
        sub = eqn.params.get("fun_jaxpr")
    if isinstance(sub, ClosedJaxpr):
        return sub.jaxpr, sub.consts
    if isinstance(sub, Jaxpr):
        return sub, ()
    return None


def read(env: dict, v):
    """The value of a jaxpr atom (a Var in ``env`` or a Literal)."""
    if isinstance(v, Literal):
        return v.val
    return env[v]


def bind(eqn, args):
    """Evaluates one equation on concrete (or traced) arguments; returns a list of outputs."""
    out = eqn.primitive.bind(*args, **eqn.params)
    return list(out) if eqn.primitive.multiple_results else [out]


def is_dropped(v) -> bool:
    return isinstance(v, jex_core.DropVar)


def _find_add_any():
    """``add_any`` (the tangent sum) is not exported by ``jax.lax``: fetch it from a jaxpr."""
    import jax

    # The transpose of the linear map of y*y adds two cotangent contributions with add_any.
    jaxpr = jax.make_jaxpr(jax.grad(lambda x: jax.numpy.sin(x) * jax.numpy.cos(x)))(1.0)
    for eqn in jaxpr.jaxpr.eqns:
        if eqn.primitive.name == "add_any":
            return eqn.primitive
    return None


add_any_p = _find_add_any()
