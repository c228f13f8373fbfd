"""Test helpers: a plain float64 reference NTK that every method is checked against."""

from __future__ import annotations

import math

import jax
import numpy as np


def _canonical(axes, ndim):
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return sorted(a % ndim for a in axes)


def _leaf_kernel(j1, j2, ndim, trace_axes, diagonal_axes):
    """Full J1 J2ᵀ, then trace, diagonal and layout, one axis at a time (no shared code with
    the methods, so that it is an independent oracle)."""
    k = sum(
        np.tensordot(a.reshape(a.shape[:ndim] + (-1,)), b.reshape(b.shape[:ndim] + (-1,)),
                     axes=([ndim], [ndim]))
        for a, b in zip(j1, j2)
    )
    trace = _canonical(trace_axes, ndim)
    diag = _canonical(diagonal_axes, ndim)
    names = [(a, 1) for a in range(ndim)] + [(a, 2) for a in range(ndim)]
    scale = 1
    for a in trace:
        i, j = names.index((a, 1)), names.index((a, 2))
        scale *= k.shape[i]
        k = np.trace(k, axis1=i, axis2=j)
        names = [n for n in names if n[0] != a]
    for a in diag:
        i, j = names.index((a, 1)), names.index((a, 2))
        k = np.diagonal(k, axis1=i, axis2=j)
        names = [n for n in names if n[0] != a] + [(a, 0)]
    order = []
    for a in range(ndim):
        if a in trace:
            continue
        order += [(a, 0)] if a in diag else [(a, 1), (a, 2)]
    k = np.transpose(k, [names.index(n) for n in order])
    return k / scale


def _jacobian(f, params, x, kwargs):
    """jacrev of every output leaf, jitted (one compilation instead of an eager dispatch per
    operation; the same numbers). Non-array leaves of ``x`` stay Python values."""
    leaves, treedef = jax.tree.flatten(x)
    arrays = [i for i, l in enumerate(leaves) if isinstance(l, (np.ndarray, jax.Array))]

    def g(p, arrs):
        full = list(leaves)
        for i, a in zip(arrays, arrs):
            full[i] = a
        return jax.tree.leaves(f(p, jax.tree.unflatten(treedef, full), **kwargs))

    return jax.jit(jax.jacrev(g))(params, [leaves[i] for i in arrays])


def reference_ntk(f, x1, x2, params, trace_axes=(-1,), diagonal_axes=(), **kwargs):
    """The empirical NTK by full Jacobians in float64 (numpy contraction).

    Args:
      f: ``f(params, x, **kwargs)``.
      x1, x2: inputs; ``x2=None`` means ``x1``.
      params: parameters (cast to float64, which needs ``jax_enable_x64``).
      trace_axes, diagonal_axes: as in :func:`ntkc.ntk_fn`.
      **kwargs: passed to ``f`` on both sides as they are (no rng splitting).

    Returns:
      A pytree of numpy float64 kernels, one per output leaf.
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError("reference_ntk needs jax.config.update('jax_enable_x64', True)")
    to64 = lambda t: jax.tree.map(
        lambda a: np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating)
        else a, t)
    params64 = to64(params)
    x1 = to64(x1)
    x2 = x1 if x2 is None else to64(x2)
    out = jax.eval_shape(lambda p: f(p, x1, **kwargs), params64)
    jac1 = _jacobian(f, params64, x1, kwargs)
    jac2 = _jacobian(f, params64, x2, kwargs)
    kernels = [
        _leaf_kernel([np.asarray(a) for a in jax.tree.leaves(j1)],
                     [np.asarray(b) for b in jax.tree.leaves(j2)],
                     o.ndim, trace_axes, diagonal_axes)
        for j1, j2, o in zip(jac1, jac2, jax.tree.leaves(out))
    ]
    return jax.tree.unflatten(jax.tree.structure(out), kernels)


def apply_form(form, p):
    """Evaluates a rule's :class:`ntkc.ir.Form` on a value ``p``: ``y = Σ Π factors · p``.

    Used to check a rule against the primitive itself (its Jacobian must match ``jacfwd`` of the
    primitive in ``p``). Labels only on ``y`` are broadcasts.
    """
    import jax.numpy as jnp

    from ntkc.ir import OneHot

    ids = {}
    lab = lambda l: ids.setdefault(l, len(ids))
    factor_labels = [ls.labels if isinstance(ls, OneHot) else ls for _, ls in form.factors]
    ops, sizes = [], {}
    for arr, labels in form.factors:
        arr = jnp.asarray(arr)
        if isinstance(labels, OneHot):
            arr, labels = jax.nn.one_hot(arr, labels.size, dtype=jnp.result_type(p)), labels.labels
        ops += [arr, [lab(l) for l in labels]]
        sizes.update(zip(labels, arr.shape))
    ops += [p, [lab(l) for l in form.param_labels]]
    sizes.update(zip(form.param_labels, jnp.shape(p)))
    present = set(form.param_labels) | {l for ls in factor_labels for l in ls}
    kept = [l for l in form.out_labels if l in present]
    y = jnp.einsum(*ops, [lab(l) for l in kept])
    for i, l in enumerate(form.out_labels):
        if l not in present:
            y = jnp.expand_dims(y, i)
    return y


def rule_forms(fn, operands, index):
    """Traces ``fn(*operands)`` and runs the registered rule of the equation that consumes
    ``operands[index]`` (the parameter), with that operand as ``p``.

    Returns ``(forms, eqn, outs)``: the rule's forms (None when it declines), the traced equation
    and its outputs on ``operands``.
    """
    from ntkc._compat import Literal, bind
    from ntkc.rules import lookup

    closed = jax.make_jaxpr(fn)(*operands)
    jaxpr = closed.jaxpr
    env = dict(zip(jaxpr.constvars, closed.consts))
    env.update(zip(jaxpr.invars, operands))
    target = jaxpr.invars[index]
    for eqn in jaxpr.eqns:
        args = [v.val if isinstance(v, Literal) else env[v] for v in eqn.invars]
        if any(v is target for v in eqn.invars):
            position = [i for i, v in enumerate(eqn.invars) if v is target][0]
            outs = bind(eqn, args)
            rule = lookup(eqn.primitive)
            if rule is None:
                raise LookupError(f"no rule registered for {eqn.primitive}")
            known = [None if i == position else a for i, a in enumerate(args)]
            shapes = [tuple(np.shape(a)) for a in args]
            avals = [jax.ShapeDtypeStruct(o.shape, o.dtype) for o in outs]
            return rule(known, position, avals, shapes, eqn.params), eqn, outs
        env.update(zip(eqn.outvars, bind(eqn, args)))
    raise ValueError(f"operand {index} is not consumed by any equation of fn")
