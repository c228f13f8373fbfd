"""neural-tangents' empirical NNGP and joint kernel functions, on ntkc's NTK.

``empirical_nngp_fn`` is the outer product of the outputs, ``f(x1) f(x2)ᵀ``, laid out by the same
trace/diagonal axes rules as the NTK (``ntkc._axes``). ``empirical_kernel_fn`` answers
``get='nngp' | 'ntk' | (...)`` as neural-tangents does, its NTK computed by
:func:`ntkc.empirical_ntk_fn`.
"""

from __future__ import annotations

import collections
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from ntkc._api import NtkImplementation, empirical_ntk_fn
from ntkc._args import read_keys, split_kwargs
from ntkc._axes import make_kernel_axes

KERNELS = ("nngp", "ntk")


def empirical_nngp_fn(f: Callable, trace_axes=(-1,), diagonal_axes=()) -> Callable:
    """Returns ``nngp_fn(x1, x2, params, **kwargs)``: the empirical NNGP ``f(x1) f(x2)ᵀ``.

    The kernel of each output leaf is laid out exactly as :func:`ntkc.ntk_fn`'s: axes that are not
    traced appear twice, interleaved (``(N1, N2, X1, X2, ...)``), ``diagonal_axes`` once, and
    ``trace_axes`` are summed over the pair and divided by their size (a mean).

    Args:
      f: ``f(params, x, **kwargs) -> array or pytree of arrays``.
      trace_axes: output axes traced over (default ``(-1,)``, the logits).
      diagonal_axes: output axes of which only the diagonal is kept.

    Returns:
      ``nngp_fn(x1, x2, params, **kwargs)``; ``x2=None`` means ``x1``. Keyword arguments are split
      between the two sides as by :func:`ntkc.empirical_ntk_fn` (a pair ``(a, b)`` gives ``a`` to
      ``x1`` and ``b`` to ``x2``; an ``rng`` key is split when ``x2`` is given). A pytree output
      gives a pytree of kernels, one per leaf (no cross-leaf terms), as in neural-tangents.

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> f = lambda p, x: jnp.tanh(x @ p)
      >>> ntkc.empirical_nngp_fn(f)(jnp.ones((4, 3)), jnp.ones((2, 3)), jnp.ones((3, 5))).shape
      (4, 2)
    """
    def nngp_fn(x1, x2, params, **kwargs):
        if x1 is None:
            raise ValueError("x1 is None; pass the inputs as x1 (x2=None means x2 = x1)")
        kwargs1, kwargs2, differ = split_kwargs(kwargs, x2 is None)
        out1 = f(params, x1, **kwargs1)
        if x2 is None and not differ:
            out2 = out1
        else:
            x2 = x1 if x2 is None else x2
            if "rng" in kwargs and kwargs1.get("rng") is not None:
                pair = isinstance(kwargs["rng"], tuple)
                _, key2 = read_keys(kwargs1["rng"], kwargs2["rng"], pair, x1, x2)
                kwargs2 = {**kwargs2, "rng": key2}
            out2 = f(params, x2, **kwargs2)
        if jax.tree.structure(out1) != jax.tree.structure(out2):
            raise ValueError("f(params, x1) and f(params, x2) return different output structures")
        return jax.tree.map(functools.partial(_contract, trace_axes, diagonal_axes), out1, out2)

    return nngp_fn


def _contract(trace_axes, diagonal_axes, y1, y2):
    """One output leaf's NNGP: ``y1 y2ᵀ`` over the kernel axes, traced axes averaged."""
    axes = make_kernel_axes(jnp.shape(y1), jnp.shape(y2), trace_axes, diagonal_axes)
    l1, l2, out = axes.labels()
    return jnp.einsum(f"{l1},{l2}->{out}", y1, y2) / axes.trace_size


def check_get(get, valid: tuple[str, ...] = KERNELS,
              default: tuple[str, ...] = KERNELS) -> tuple[bool, tuple[str, ...]]:
    """``(single, names)`` for neural-tangents' ``get``: None (``default``), one of ``valid``, or
    a non-empty tuple of distinct ones (case-insensitive)."""
    if get is None:
        return False, default
    single = isinstance(get, str)
    names = (get,) if single else get
    try:
        names = tuple(g.lower() for g in names)
    except (TypeError, AttributeError):
        raise TypeError(f"get must be None, one of {valid} or a tuple of them, got {get!r}") from None
    if not names:
        raise ValueError(f"get must be non-empty: None, one of {valid} or a tuple of them")
    bad = [g for g in names if g not in valid]
    if bad:
        raise ValueError(f"get={get!r}: unknown kernel(s) {bad}; valid: {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ValueError(f"get={get!r} repeats an entry; every entry must be unique")
    return single, names


@functools.lru_cache(maxsize=None)
def kernel_tuple(name: str, fields: tuple[str, ...]):
    """The namedtuple class ``name`` with ``fields`` (one class per field tuple, as NT caches)."""
    return collections.namedtuple(name, fields)


def empirical_kernel_fn(
    f: Callable,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    implementation: int | NtkImplementation = NtkImplementation.STRUCTURED_DERIVATIVES,
    _j_rules: bool = True,
    _s_rules: bool = True,
    _fwd: bool | None = None,
) -> Callable:
    """neural-tangents' ``empirical_kernel_fn``: the empirical NNGP and NTK, same signature.

    Args:
      f: ``f(params, x, **kwargs)``.
      trace_axes, diagonal_axes: as in :func:`ntkc.ntk_fn`, for both kernels.
      vmap_axes, implementation: for the NTK only, as in :func:`ntkc.empirical_ntk_fn` (whose
        private switches ``_j_rules``, ``_s_rules``, ``_fwd`` are accepted and ignored).

    Returns:
      ``kernel_fn(x1, x2, get, params, **kwargs)``. ``get`` is ``'nngp'`` or ``'ntk'`` (returns
      that kernel), a tuple of them (returns a namedtuple ``EmpiricalKernel`` with those fields, in
      that order), or ``None`` (both: ``EmpiricalKernel(nngp, ntk)``). For a pytree output, the
      output's pytree of those.

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
      >>> params = {"w": jnp.ones((3, 8)), "v": jnp.ones((8, 2))}
      >>> k = ntkc.empirical_kernel_fn(f)(jnp.ones((4, 3)), None, ("ntk", "nngp"), params)
      >>> type(k).__name__, k.ntk.shape, k.nngp.shape
      ('EmpiricalKernel', (4, 4), (4, 4))
    """
    fns = {
        "nngp": empirical_nngp_fn(f, trace_axes, diagonal_axes),
        "ntk": empirical_ntk_fn(f, trace_axes, diagonal_axes, vmap_axes, implementation),
    }

    def kernel_fn(x1, x2, get, params, **kwargs):
        single, names = check_get(get)
        kernels = {g: fns[g](x1, x2, params, **kwargs) for g in names}
        if single:
            return kernels[names[0]]
        cls = kernel_tuple("EmpiricalKernel", names)
        return jax.tree.map(lambda *ks: cls(*ks), *(kernels[g] for g in names))

    return kernel_fn
