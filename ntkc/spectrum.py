"""Extreme eigenvalues and condition number of the NTK over a set of inputs.

Small problems materialise the kernel (:func:`ntkc.ntk_fn`) and call ``numpy.linalg.eigvalsh``.
Large ones never build it: ARPACK's implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh`` on
a ``LinearOperator``) applies ``Θ`` through :func:`ntkc.ntk_vp_fn`, one VJP and one JVP per
product (times the size of the traced axes).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import numpy as np

from ntkc._api import ntk_fn
from ntkc._axes import make_kernel_axes
from ntkc._matfree import ntk_vp_fn

#: Operators up to this side are materialised when ``matrix_free=None``.
DENSE_LIMIT = 1024
WHICH = ("largest", "smallest")


def ntk_eigenvalues(f: Callable, x, params, k: int | None = None, *, which: str = "largest",
                    trace_axes=(-1,), vmap_axes=None, method: str = "auto",
                    matrix_free: bool | None = None, tol: float = 0.0, maxiter: int | None = None,
                    seed: int = 0, **kwargs) -> np.ndarray:
    """The ``k`` largest (or smallest) eigenvalues of the NTK ``Θ(x, x)``.

    The operator is the kernel :func:`ntkc.ntk_fn` returns with these ``trace_axes`` (traced axes
    averaged), read as a square matrix over the non-traced output axes (``N`` examples times the
    other output axes).

    Args:
      f: ``f(params, x, **kwargs)`` with a single array output.
      x: the inputs.
      params: the parameters.
      k: how many eigenvalues; ``None`` for all of them (materialised kernel only).
      which: ``"largest"`` (returned in descending order) or ``"smallest"`` (ascending).
      trace_axes: output axes traced (averaged) as in :func:`ntkc.ntk_fn`.
      vmap_axes, method: for the materialised kernel, as in :func:`ntkc.ntk_fn`.
      matrix_free: ``True``: ARPACK Lanczos on ``Θ v`` products (:func:`ntkc.ntk_vp_fn`), never
        building ``Θ``; ``False``: the materialised kernel and ``numpy.linalg.eigvalsh``;
        ``None``: materialised up to a side of ``DENSE_LIMIT`` (1024), matrix-free above.
      tol, maxiter: passed to ``scipy.sparse.linalg.eigsh`` (``tol=0``: machine precision).
      seed: seeds the Lanczos start vector (the result does not depend on it, up to ``tol``).
      **kwargs: passed to ``f``.

    Returns:
      A float64 numpy array of ``k`` eigenvalues (all of them for ``k=None``).

    Example:
      >>> import jax.numpy as jnp, numpy as np, ntkc
      >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
      >>> params = {"w": jnp.ones((3, 8)) / 3, "v": jnp.ones((8, 2))}
      >>> x = jnp.arange(12.0).reshape(4, 3) / 12
      >>> top = ntkc.ntk_eigenvalues(f, x, params, k=2)
      >>> bool(np.allclose(top, ntkc.ntk_eigenvalues(f, x, params, k=2, matrix_free=True)))
      True
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ValueError(f"k must be a positive int or None, got {k!r}")
    dim = _side(f, x, params, trace_axes, kwargs)
    if k is not None and k > dim:
        raise ValueError(f"k={k} exceeds the operator's side {dim}")
    if _use_matrix_free(matrix_free, dim, k):
        if k >= dim - 1:
            raise ValueError(f"matrix_free: k={k} must be below the side minus one ({dim - 1}); "
                             "use matrix_free=False for (nearly) all eigenvalues")
        matvec = _matvec(f, x, params, trace_axes, kwargs)
        vals = _eigsh(matvec, dim, k, "LA" if which == "largest" else "SA", tol, maxiter, seed)
    else:
        vals = np.linalg.eigvalsh(_dense(f, x, params, trace_axes, vmap_axes, method, kwargs))
        if k is not None:
            vals = vals[-k:] if which == "largest" else vals[:k]
    return np.sort(vals)[::-1].copy() if which == "largest" else np.sort(vals)


def condition_number(f: Callable, x, params, *, trace_axes=(-1,), vmap_axes=None,
                     method: str = "auto", matrix_free: bool | None = None, tol: float = 0.0,
                     maxiter: int | None = None, seed: int = 0, **kwargs) -> float:
    """``λ_max / λ_min`` of the NTK ``Θ(x, x)``; ``inf`` when it is numerically singular.

    Numerically singular: ``λ_min <= eps · side · λ_max``, ``eps`` the precision of ``f``'s
    output dtype and ``side`` the operator's side (e.g. more examples than parameters).

    The TE-NAS score (Chen, Gong, Wang, ICLR 2021) of an untrained network; a large condition
    number means slow training along the kernel's small directions. Arguments as in
    :func:`ntk_eigenvalues`; matrix-free, both ends come from one ARPACK run (``which="BE"``).
    The smallest eigenvalue converges slowly when the small end of the spectrum is clustered:
    raise ``maxiter`` or materialise the kernel (``matrix_free=False``) if ARPACK does not converge.

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
      >>> params = {"w": jnp.ones((3, 8)) / 3, "v": jnp.ones((8, 2))}
      >>> x = jnp.arange(12.0).reshape(4, 3) / 12
      >>> ntkc.condition_number(f, x, params) > 1
      True
    """
    dim = _side(f, x, params, trace_axes, kwargs)
    if _use_matrix_free(matrix_free, dim, 2) and dim > 3:
        vals = _eigsh(_matvec(f, x, params, trace_axes, kwargs), dim, 2, "BE", tol, maxiter, seed)
    else:
        vals = np.linalg.eigvalsh(_dense(f, x, params, trace_axes, vmap_axes, method, kwargs))
    lo, hi = float(np.min(vals)), float(np.max(vals))
    eps = np.finfo(_single_output(f, x, params, kwargs).dtype).eps
    return math.inf if lo <= eps * dim * hi else hi / lo  # numerically singular: inf


def _use_matrix_free(matrix_free, dim, k) -> bool:
    if matrix_free and k is None:
        raise ValueError("matrix_free=True needs a number of eigenvalues k (not None)")
    return dim > DENSE_LIMIT and k is not None if matrix_free is None else bool(matrix_free)


def _single_output(f, x, params, kwargs):
    out = jax.eval_shape(lambda p: f(p, x, **kwargs), params)
    leaves = jax.tree.leaves(out)
    if len(leaves) != 1:
        raise ValueError(f"f must return a single array for a spectrum, got {len(leaves)} output "
                         "leaves (the NTK between different leaves is not computed)")
    return leaves[0]


def _dense(f, x, params, trace_axes, vmap_axes, method, kwargs) -> np.ndarray:
    """The materialised kernel as a float64 square matrix over the non-traced axes."""
    theta = np.asarray(ntk_fn(f, trace_axes, (), vmap_axes, method)(x, None, params, **kwargs),
                       np.float64)
    side = math.prod(theta.shape[0::2])
    theta = np.transpose(theta, [*range(0, theta.ndim, 2), *range(1, theta.ndim, 2)])
    theta = theta.reshape(side, side)
    return (theta + theta.T) / 2


def _side(f, x, params, trace_axes, kwargs) -> int:
    """The side of the kernel read as a square matrix: the size of the non-traced axes."""
    out = _single_output(f, x, params, kwargs)
    axes = make_kernel_axes(out.shape, out.shape, trace_axes, ())
    return math.prod(out.shape[a] for a in axes.free)


def _matvec(f, x, params, trace_axes, kwargs):
    """The traced kernel as a map on flat float64 vectors, matrix-free.

    ``Θ_traced v = mean_t (Θ (v ⊗ e_t))[..., t]``: one probe per traced index ``t``, all in one
    batched call of :func:`ntkc.ntk_vp_fn`.
    """
    out = _single_output(f, x, params, kwargs)
    axes = make_kernel_axes(out.shape, out.shape, trace_axes, ())
    free, traced = axes.free, axes.trace
    free_shape = tuple(out.shape[a] for a in free)
    traced_shape = tuple(out.shape[a] for a in traced)
    side, probes = math.prod(free_shape), math.prod(traced_shape)
    order = [*free, *traced]            # the output axes in (free..., traced...) order
    back = np.argsort(order)
    mvp = ntk_vp_fn(f, x, None, params, **kwargs)

    dtype = np.dtype(out.dtype)
    eye = np.eye(probes, dtype=dtype).reshape((probes,) + (1,) * len(free) + traced_shape)

    # plain numpy around the jitted product: ntk_vp_fn is a top-level jit (its compiler options
    # cannot be nested in another jit)
    def apply(v):
        v = v.astype(dtype).reshape(free_shape + (1,) * len(traced))
        batch = np.transpose(v[None] * eye, [0, *(1 + back)])          # (T, *out.shape)
        res = np.transpose(np.asarray(mvp(batch)), [0, *(1 + np.asarray(order))])
        res = res.reshape(probes, side, probes).astype(np.float64)
        return np.einsum("tmt->m", res) / probes

    return apply


def _eigsh(matvec, dim, k, which, tol, maxiter, seed) -> np.ndarray:
    from scipy.sparse.linalg import LinearOperator, eigsh  # scipy comes with jax

    op = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(dim)
    return eigsh(op, k=k, which=which, tol=tol, maxiter=maxiter, v0=v0,
                 return_eigenvectors=False)
