"""The pseudo-NTK (pNTK) of Mohamadi, Bae and Sutherland (ICML 2023): one cotangent per example.

For ``f(params, x) -> (..., O)`` the pNTK is the NTK of ``g(params, x) = Σ_o f(params, x)[..., o]
/ √O``. It approximates the full NTK as ``Θ(x1, x2) ≈ pNTK(x1, x2) ⊗ I_O``: exact when the
off-diagonal logit blocks vanish and the diagonal ones are equal, as at infinite width; at finite
width the paper bounds the error by O(1/√width) at initialisation.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from ntkc._api import KernelFunction, ntk_fn


def pseudo_ntk_fn(f: Callable, trace_axes=(), diagonal_axes=(), vmap_axes=None,
                  method: str = "auto", logits_axis: int = -1, **options) -> KernelFunction:
    """Returns ``kernel_fn(x1, x2, params, **kwargs)``, the pNTK of ``f``.

    The pNTK is the NTK of ``g(params, x) = sum(f(params, x), logits_axis) / √O``, ``O`` the size
    of the logits axis: ``pNTK(x1, x2) = (1/O) Σ_{o, o'} J_o(x1) J_o'(x2)ᵀ``. It needs one
    cotangent per example instead of ``O``, so it costs about 1/O of the full NTK (``trace_axes=
    ()``) and is what TE-NAS-style scores and kernel regressions use on many classes.

    The approximation: ``Θ(x1, x2) ≈ pNTK(x1, x2) · I_O``. Against ntkc's traced NTK (the mean of
    the diagonal logit blocks, ``trace_axes=(-1,)``) the pNTK adds the mean of the off-diagonal
    blocks, ``(1/O) Σ_{o≠o'} J_o J_o'ᵀ``, which vanishes at infinite width and is O(1/√width)
    relative at initialisation (Mohamadi, Bae, Sutherland, "A fast, well-founded approximation
    to the empirical neural tangent kernel", ICML 2023).

    Args:
      f: ``f(params, x, **kwargs)``, every output leaf with a logits axis.
      trace_axes, diagonal_axes: axes of ``g``'s outputs (``f``'s with the logits axis removed),
        as in :func:`ntkc.ntk_fn`. Default ``()``: for ``(N, O)`` logits the kernel is ``(N1, N2)``.
      vmap_axes: as in :func:`ntkc.ntk_fn`, its output axes counted on ``g``'s outputs.
      method: as in :func:`ntkc.ntk_fn`.
      logits_axis: the axis of ``f``'s outputs summed over (default the last).
      **options: the other options of :func:`ntkc.ntk_fn` (``strict``, ``memory_limit``, ...).

    Returns:
      ``kernel_fn(x1, x2, params, **kwargs)`` (a :class:`ntkc.KernelFunction`).

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
      >>> params = {"w": jnp.ones((3, 8)), "v": jnp.ones((8, 10))}
      >>> ntkc.pseudo_ntk_fn(f)(jnp.ones((4, 3)), None, params).shape
      (4, 4)
    """
    if not isinstance(logits_axis, int) or isinstance(logits_axis, bool):
        raise TypeError(f"logits_axis must be an int, got {logits_axis!r}")

    def summed(params, x, **kwargs):
        return jax.tree.map(_sum_logits(logits_axis), f(params, x, **kwargs))

    summed.__name__ = f"pntk_{getattr(f, '__name__', 'f')}"
    return ntk_fn(summed, trace_axes, diagonal_axes, vmap_axes, method, **options)


def _sum_logits(axis):
    def reduce(y):
        if jnp.ndim(y) == 0 or not -jnp.ndim(y) <= axis < jnp.ndim(y):
            raise ValueError(f"logits_axis={axis} is out of range for an output of shape "
                             f"{jnp.shape(y)}")
        return jnp.sum(y, axis) / math.sqrt(jnp.shape(y)[axis])

    return reduce
