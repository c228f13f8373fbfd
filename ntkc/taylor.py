"""Taylor expansions of ``f(params, ...)`` in ``params``: neural-tangents' ``linearize`` and
``taylor_expand``."""

from __future__ import annotations

import math
import operator
from typing import Callable

import jax


def linearize(f: Callable, params) -> Callable:
    """Returns ``f_lin``, the first-order Taylor expansion of ``f`` in its parameters.

    ``f_lin(p, *args, **kwargs) = f(params, *args, **kwargs) + J (p - params)``, with ``J`` the
    Jacobian of ``f`` in ``params`` at ``params``: one JVP per call, the Jacobian never built.
    Gradient descent on ``f_lin`` is what :mod:`ntkc.predict` solves in closed form.

    Args:
      f: ``f(params, *args, **kwargs) -> pytree``.
      params: the parameters to expand about (any pytree).

    Returns:
      ``f_lin(p, *args, **kwargs)`` with ``f``'s signature and output structure.

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> f = lambda p, x: jnp.sin(p * x)
      >>> f_lin = ntkc.linearize(f, 0.0)
      >>> round(float(f_lin(0.1, 2.0)), 6)   # sin(0) + cos(0)·2·0.1
      0.2
    """
    def f_lin(p, *args, **kwargs):
        g = lambda q: f(q, *args, **kwargs)
        y0, dy = jax.jvp(g, (params,), (_difference(p, params),))
        return jax.tree.map(operator.add, y0, dy)

    return f_lin


def taylor_expand(f: Callable, params, degree: int) -> Callable:
    """Returns ``f_tayl``, the Taylor expansion of ``f`` of order ``degree`` about ``params``.

    ``f_tayl(p, *args, **kwargs) = Σ_{k=0..degree} D^k f(params)[Δ, ..., Δ] / k!`` with
    ``Δ = p - params``: the k-th term is k nested JVPs along ``Δ`` (so the cost grows
    exponentially with ``degree``; it is meant for small degrees). ``degree=1`` is
    :func:`linearize`, ``degree=0`` is the constant ``f(params, ...)``.

    Args:
      f: ``f(params, *args, **kwargs) -> pytree``.
      params: the parameters to expand about.
      degree: the order, an int >= 0.

    Returns:
      ``f_tayl(p, *args, **kwargs)`` with ``f``'s signature and output structure.

    Example:
      >>> import ntkc
      >>> f_tayl = ntkc.taylor_expand(lambda p, x: x * p**3, 1.0, degree=2)
      >>> float(f_tayl(2.0, 1.0))   # 1 + 3·1 + 6·1/2
      7.0
    """
    if not isinstance(degree, int) or isinstance(degree, bool):
        raise TypeError(f"degree must be an int, got {degree!r}")
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")

    def f_tayl(p, *args, **kwargs):
        delta = _difference(p, params)
        derivative = lambda q: f(q, *args, **kwargs)  # D^0 f, then D^k f(q)[Δ, ..., Δ]
        total = derivative(params)
        for k in range(1, degree + 1):
            derivative = _along(derivative, delta)
            term = derivative(params)
            total = jax.tree.map(lambda a, b: a + b / math.factorial(k), total, term)
        return total

    return f_tayl


def _along(g: Callable, delta) -> Callable:
    """``q -> Dg(q)[delta]``: the directional derivative of ``g`` along ``delta``."""
    return lambda q: jax.jvp(g, (q,), (delta,))[1]


def _difference(p, params):
    if jax.tree.structure(p) != jax.tree.structure(params):
        raise ValueError(f"the new parameters have structure {jax.tree.structure(p)}, but the "
                         f"expansion is about parameters of structure {jax.tree.structure(params)}")
    return jax.tree.map(operator.sub, p, params)
