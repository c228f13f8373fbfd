"""Matrix-free NTK products and kernel regression by conjugate gradients."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.sparse.linalg import cg

from ntkc import _compat
from ntkc._args import check_params


def ntk_vp_fn(f: Callable, x1, x2, params, **kwargs) -> Callable:
    """Returns ``V -> Θ(x1, x2) V``: the NTK applied to vectors without building Θ.

    Θ here is the full (untraced) kernel, an operator from ``f(x2)``'s output space to
    ``f(x1)``'s: ``(Θ V)[i] = Σ_j J(x1)[i] · J(x2)[j] V[j]``, computed as one VJP and one JVP,
    ``J(x1) (J(x2)ᵀ V)``: the cost of two passes, whatever the number of outputs.

    Args:
      f: ``f(params, x, **kwargs)``.
      x1, x2: inputs; ``x2=None`` means ``x1`` (then Θ is symmetric positive semi-definite).
      params: parameters.
      **kwargs: passed to ``f`` on both sides.

    Returns:
      A jitted function of ``V``, a pytree shaped like ``f(params, x2)`` (an array for an array
      output), or with one extra leading axis on every leaf for a batch of probe vectors; it
      returns the products shaped like ``f(params, x1)`` (with the same leading axis).

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> f = lambda p, x: jnp.tanh(x @ p)
      >>> mvp = ntkc.ntk_vp_fn(f, jnp.ones((4, 3)), None, jnp.ones((3, 2)))
      >>> mvp(jnp.ones((4, 2))).shape
      (4, 2)
    """
    check_params(params)
    x2 = x1 if x2 is None else x2
    jaxpr, out2 = jax.make_jaxpr(lambda p: f(p, x2, **kwargs), return_shape=True)(params)
    out_shapes = [o.shape for o in jax.tree.leaves(out2)]

    def product(v, params, x1, x2):
        _, pullback = jax.vjp(lambda p: f(p, x2, **kwargs), params)
        (u,) = pullback(v)
        return jax.jvp(lambda p: f(p, x1, **kwargs), (params,), (u,))[1]

    # params and inputs are arguments, not constants of the program: XLA would otherwise fold
    # the forward pass into the compile (a minute for a CNN over 512 images)
    @functools.partial(jax.jit, compiler_options=_compat.jit_options(_compat.compiler_options(jaxpr)))
    def jitted(v, params, x1, x2):
        shapes = [jnp.shape(l) for l in jax.tree.leaves(v)]
        if jax.tree.structure(v) != jax.tree.structure(out2):
            raise ValueError(f"V must have the structure of f(params, x2) {jax.tree.structure(out2)}, "
                             f"got {jax.tree.structure(v)}")
        if shapes == out_shapes:
            return product(v, params, x1, x2)
        if all(len(s) == len(o) + 1 and s[1:] == o for s, o in zip(shapes, out_shapes)):
            return jax.vmap(product, in_axes=(0, None, None, None))(v, params, x1, x2)
        raise ValueError(f"V has leaf shapes {shapes}; expected f(params, x2)'s {out_shapes}, "
                         "optionally with one leading probe axis")

    return lambda v: jitted(v, params, x1, x2)


def kernel_solve(kernel, y, *, ridge: float = 0.0, tol: float = 1e-6, maxiter: int | None = None,
                 x0=None):
    """Solves ``(Θ + ridge·I) α = y`` by conjugate gradients: kernel regression's coefficients.

    Args:
      kernel: a square Gram matrix ``(N, N)`` (e.g. ``ntk_fn(f)(x, None, params)`` or
        :func:`ntkc.gram`), or a function ``V -> Θ V`` such as :func:`ntk_vp_fn` with
        ``x2=None`` (matrix-free: Θ is never built).
      y: targets: ``(N,)`` or ``(N, K)`` for a matrix, a pytree shaped like ``V`` for a function.
      ridge: the regularisation λ >= 0 added to the diagonal.
      tol, maxiter, x0: passed to ``jax.scipy.sparse.linalg.cg``.

    Returns:
      ``α`` shaped like ``y``; predictions on new inputs are ``Θ(x_new, x) α``.
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if callable(kernel):
        matvec = lambda v: jax.tree.map(lambda a, b: a + ridge * b, kernel(v), v)
    else:
        kernel = jnp.asarray(kernel)
        if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
            raise ValueError(f"kernel must be a square (N, N) matrix or a function, got shape "
                             f"{kernel.shape}")
        y = jnp.asarray(y)
        if y.shape[:1] != kernel.shape[:1]:
            raise ValueError(f"y has {y.shape[0] if y.ndim else 0} rows but the kernel is "
                             f"{kernel.shape}")
        matvec = lambda v: kernel @ v + ridge * v
    alpha, _ = cg(matvec, y, x0=x0, tol=tol, maxiter=maxiter)
    return alpha
