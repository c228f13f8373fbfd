"""The only module that knows about JAX version differences and jaxpr internals.

Everything here uses ``jax.extend.core`` (public) but relies on parameter names of particular
primitives, which have changed between releases.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import numpy as np
from jax.extend import core as jex_core

Literal = jex_core.Literal
Var = jex_core.Var
ClosedJaxpr = jex_core.ClosedJaxpr
Jaxpr = jex_core.Jaxpr
Primitive = jex_core.Primitive

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


# The linear equation a custom_vjp function leaves in a linearized jaxpr: its transpose is the
# user's bwd, and it has no forward-mode rule (not exported by jax.lax: known by name).
_REVERSE_ONLY = frozenset({"custom_lin"})


def wrapped_primitive(eqn):
    """The primitive an equation computes: a ``guarded`` equation's (``ntkc.rules.guarded``, an
    equation of a conditional's branch) is the one it wraps."""
    return eqn.params.get("guarded_primitive", eqn.primitive)


def reverse_only(eqn) -> bool:
    """Whether an equation of a linear jaxpr can only be transposed, not differentiated forward
    (a custom_vjp region): its Jacobian comes from its transpose (``jax.linear_transpose``)."""
    return wrapped_primitive(eqn).name in _REVERSE_ONLY


_CUSTOM_DERIVATIVES = frozenset({"custom_vjp_call", "custom_vjp_call_jaxpr", "custom_jvp_call"})


def custom_derivative(eqn) -> bool:
    """Whether an equation calls a function with a custom derivative (custom_vjp / custom_jvp),
    whose derivatives come from the user's rules, not from its body."""
    return eqn.primitive.name in _CUSTOM_DERIVATIVES


def forward_mode_blocked(jaxpr) -> bool:
    """Whether a function's (closed) jaxpr calls a custom_vjp function, through which
    ``jax.jvp`` cannot go."""
    return not primitive_names(jaxpr).isdisjoint({"custom_vjp_call", "custom_vjp_call_jaxpr"})


def read(env: dict, v):
    """The value of a jaxpr atom (a Var in ``env`` or a Literal)."""
    if isinstance(v, Literal):
        return v.val
    return env[v]


def _user_context(eqn):
    try:  # keep the user's source line on re-traced equations (error messages name it)
        from jax.extend import source_info_util

        return source_info_util.user_context(eqn.source_info.traceback)
    except Exception:
        return contextlib.nullcontext()


def bind(eqn, args):
    """Evaluates one equation on concrete (or traced) arguments; returns a list of outputs."""
    with _user_context(eqn):
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


def _find_select_and_gather_add():
    """``select_and_gather_add`` (max pooling's JVP) is not exported by ``jax.lax``: fetch it
    from the linear map of a max pool."""
    import jax

    pool = lambda x: jax.lax.reduce_window(x, -jax.numpy.inf, jax.lax.max, (2,), (2,), "VALID")
    # abstract inputs: an array would start the XLA backend at import, before the
    # jax.distributed.initialize that `ntkc gram` calls
    like = jax.ShapeDtypeStruct((4,), jax.numpy.float32)
    jaxpr = jax.make_jaxpr(lambda x, t: jax.jvp(pool, (x,), (t,)))(like, like)
    for eqn in jaxpr.jaxpr.eqns:
        if eqn.primitive.name == "select_and_gather_add":
            return eqn.primitive
    return None


select_and_gather_add_p = _find_select_and_gather_add()


def sub_jaxprs(eqn) -> list:
    """The jaxprs in an equation's parameters (a scan's body, a cond's branches, a jit's call)."""
    subs = []
    for v in eqn.params.values():
        for s in v if isinstance(v, (tuple, list)) else [v]:
            if isinstance(s, (jex_core.ClosedJaxpr, jex_core.Jaxpr)):
                subs.append(s)
    return subs


def primitive_names(jaxpr) -> set[str]:
    """The names of the primitives a (closed) jaxpr uses, sub-jaxprs included."""
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in sub_jaxprs(eqn):
            names |= primitive_names(sub)
    return names


# XLA:CPU in jaxlib 0.10 hands convolutions to YNNPACK, which runs the NTK's batched 3x3
# convolutions and their transposes at 60-85 GFLOP/s on an AVX-512 CPU, against 150-190 for
# XLA's own kernels (as in jaxlib 0.9, whose default this restores: YNNPACK for dots only).
# A per-program debug option, passed by jax.jit(compiler_options=...).
_CPU_CONV_OPTIONS = (("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),)


@functools.cache
def _cpu_conv_options() -> tuple:
    """``_CPU_CONV_OPTIONS`` when the default backend is a CPU whose XLA accepts them, else ()."""
    if jax.default_backend() != "cpu":
        return ()
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(_CPU_CONV_OPTIONS)).lower(
            np.float32(0)).compile()
    except Exception:  # an XLA without this option (older or newer): keep its defaults
        return ()
    return _CPU_CONV_OPTIONS


def compiler_options(jaxpr) -> tuple:
    """XLA options (sorted ``(name, value)`` pairs) for the kernel programs of a function with
    this jaxpr: on CPU, convolutions by XLA's own kernels; () otherwise."""
    if "conv_general_dilated" not in primitive_names(jaxpr):
        return ()
    return _cpu_conv_options()


def jit_options(options: tuple) -> dict | None:
    """Sorted ``(name, value)`` option pairs as ``jax.jit(compiler_options=...)`` takes them."""
    return dict(options) or None


def known_options(options: dict) -> tuple:
    """The XLA options (as saved by ``Compiled.save``) that this JAX's backend accepts."""
    return tuple(sorted(o for o in options.items() if o in _cpu_conv_options()))


def is_traced(tree) -> bool:
    """Whether any leaf is a tracer (the call runs inside a jit, vmap, grad or eval_shape)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def source_line(eqn) -> str:
    """Where the user's code created a jaxpr equation (``file:line (function)``), or ''."""
    try:
        from jax.extend import source_info_util
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # an equation without source information, or a JAX without the helper
        return ""


def device_memory_bytes() -> int | None:
    """Memory of the default device: its allocator's limit (GPU, TPU), or the host's physical
    memory for a CPU; None when unknown."""
    import os

    device = jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # a backend without memory statistics
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None
