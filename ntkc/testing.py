"""Test helpers: a plain float64 reference NTK that every method is checked against."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from ntkc._leaves import replace_leaves


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
    arrays = tuple(i for i, l in enumerate(leaves) if isinstance(l, (np.ndarray, jax.Array)))
    statics = tuple((type(l), l) for i, l in enumerate(leaves) if i not in arrays)
    key = (f, treedef, arrays, statics, tuple(sorted(kwargs.items())))
    try:
        jacobian = _cached_jacobian(*key)
    except TypeError:  # an unhashable f, leaf or keyword value (an array): compiled afresh
        jacobian = _jitted_jacobian(*key)
    return jacobian(params, [leaves[i] for i in arrays])


def _jitted_jacobian(f, treedef, arrays, statics, kwargs):
    statics, kwargs = iter([value for _, value in statics]), dict(kwargs)
    leaves = [None if i in arrays else next(statics) for i in range(treedef.num_leaves)]

    def g(p, arrs):
        x = jax.tree.unflatten(treedef, replace_leaves(leaves, list(arrays), arrs))
        return jax.tree.leaves(f(p, x, **kwargs))

    return jax.jit(jax.jacrev(g))


# one compilation per function and input structure across calls (the suite calls the reference
# on one model under many axes and methods); jit still compiles once per shape
_cached_jacobian = functools.lru_cache(maxsize=64)(_jitted_jacobian)


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
    jac2 = jac1 if x2 is x1 else _jacobian(f, params64, x2, kwargs)
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


def consuming_equation(fn, operands, index):
    """Traces ``fn(*operands)``; returns ``(eqn, args, position)``: the first equation that
    consumes ``operands[index]``, its evaluated arguments, and the operand's position in it."""
    from ntkc._compat import Literal, bind

    closed = jax.make_jaxpr(fn)(*operands)
    jaxpr = closed.jaxpr
    env = dict(zip(jaxpr.constvars, closed.consts))
    env.update(zip(jaxpr.invars, operands))
    target = jaxpr.invars[index]
    for eqn in jaxpr.eqns:
        args = [v.val if isinstance(v, Literal) else env[v] for v in eqn.invars]
        if any(v is target for v in eqn.invars):
            return eqn, args, [i for i, v in enumerate(eqn.invars) if v is target][0]
        env.update(zip(eqn.outvars, bind(eqn, args)))
    raise ValueError(f"operand {index} is not consumed by any equation of fn")


def rule_forms(fn, operands, index):
    """Traces ``fn(*operands)`` and runs the registered rule of the equation that consumes
    ``operands[index]`` (the parameter), with that operand as ``p``.

    Returns ``(forms, eqn, outs)``: the rule's forms (None when it declines), the traced equation
    and its outputs on ``operands``.
    """
    from ntkc._compat import bind
    from ntkc.rules import lookup

    eqn, args, position = consuming_equation(fn, operands, index)
    outs = bind(eqn, args)
    rule = lookup(eqn.primitive)
    if rule is None:
        raise LookupError(f"no rule registered for {eqn.primitive}")
    known = [None if i == position else a for i, a in enumerate(args)]
    shapes = [tuple(np.shape(a)) for a in args]
    avals = [jax.ShapeDtypeStruct(o.shape, o.dtype) for o in outs]
    return rule(known, position, avals, shapes, eqn.params), eqn, outs


# ----------------------------------------------------------------------------- check_rule


def _rule_fn(primitive_or_fn, params):
    """``(fn, primitive)``: a function of the operands that applies the primitive (or the
    function; ``primitive`` is then None)."""
    import functools

    from jax.extend.core import Primitive

    if isinstance(primitive_or_fn, Primitive):
        prim = primitive_or_fn

        def fn(*args):
            out = prim.bind(*args, **params)
            return list(out) if prim.multiple_results else out

        return fn, prim
    if not callable(primitive_or_fn):
        raise TypeError(f"check_rule: expected a primitive or a function, got {primitive_or_fn!r}")
    fn = functools.partial(primitive_or_fn, **params) if params else primitive_or_fn

    def inlined(*args):
        # jnp functions wrap their primitive in a jit equation: trace through it
        with jax.disable_jit():
            return fn(*args)

    return inlined, None


def _factor_shape(arr, labels):
    """The labels of a factor and the shape they describe (a one-hot factor gains an axis)."""
    from ntkc.ir import OneHot

    if isinstance(labels, OneHot):
        return tuple(labels.labels), tuple(np.shape(arr)) + (labels.size,)
    return tuple(labels), tuple(np.shape(arr))


def _check_form_labels(form, k, y_shape, p_shape, where):
    """Asserts one form's structural claims; messages name the output, label and axis."""
    import jax.numpy as jnp

    from ntkc.ir import Form, OneHot

    here = f"{where}, output {k}"
    assert isinstance(form, Form), f"{here}: the rule returned {form!r}, not an ntkc.Form"
    assert isinstance(form.structure, str) and form.structure, (
        f"{here}: the Form's structure is {form.structure!r}; give a short summary for plans "
        "(e.g. 'diagonal')")
    assert len(form.out_labels) == len(y_shape), (
        f"{here}: out_labels {form.out_labels} has {len(form.out_labels)} labels for an output "
        f"of rank {len(y_shape)} (shape {y_shape}): one label per output axis")
    assert len(form.param_labels) == len(p_shape), (
        f"{here}: param_labels {form.param_labels} has {len(form.param_labels)} labels for p of "
        f"rank {len(p_shape)} (shape {p_shape}): one label per p axis")
    for name, labels in (("out_labels", form.out_labels), ("param_labels", form.param_labels)):
        for label in labels:
            try:
                hash(label)
            except TypeError:
                raise AssertionError(f"{here}: {name} label {label!r} is not hashable") from None
        repeated = sorted({repr(l) for l in labels if labels.count(l) > 1})
        assert not repeated, f"{here}: label {', '.join(repeated)} repeated in {name} {labels}"
    seen = {}  # label -> (size, where it was first seen)

    def claim(label, size, place):
        if label in seen and seen[label][0] != size:
            raise AssertionError(
                f"{here}: label {label!r} has size {seen[label][0]} on {seen[label][1]} but size "
                f"{size} on {place}")
        seen.setdefault(label, (size, place))

    for a, (label, n) in enumerate(zip(form.out_labels, y_shape)):
        claim(label, n, f"y axis {a}")
    for a, (label, n) in enumerate(zip(form.param_labels, p_shape)):
        claim(label, n, f"p axis {a}")
    for i, (arr, labels) in enumerate(form.factors):
        ls, shape = _factor_shape(arr, labels)
        if isinstance(labels, OneHot):
            assert len(ls) == len(shape), (
                f"{here}: factor {i} is a OneHot over index array of shape {np.shape(arr)}: it "
                f"needs {len(shape)} labels (one per index axis, then the one-hot axis), got {ls}")
            dtype = jnp.result_type(arr)
            assert jnp.issubdtype(dtype, jnp.integer), (
                f"{here}: factor {i} is a OneHot but its index array has dtype {dtype}")
        else:
            assert len(ls) == len(shape), (
                f"{here}: factor {i} has shape {shape} (rank {len(shape)}) but {len(ls)} labels "
                f"{ls}: one label per factor axis")
            dtype = jnp.result_type(arr)
            assert jnp.issubdtype(dtype, jnp.inexact), (
                f"{here}: factor {i} has dtype {dtype}; factors are floating point (use OneHot for "
                "integer indices)")
        for a, (label, n) in enumerate(zip(ls, shape)):
            try:
                hash(label)
            except TypeError:
                raise AssertionError(f"{here}: factor {i} label {label!r} is not hashable") from None
            claim(label, n, f"factor {i} axis {a}")


def _compare(k, got, want, what, where, rtol, atol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    dev = np.abs(got - want)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    tol = atol + rtol * scale
    if dev.size and float(dev.max()) > tol:
        at = np.unravel_index(int(np.argmax(dev)), dev.shape)
        raise AssertionError(
            f"{where}, output {k}: the Form's Jacobian differs from {what} of the primitive: max "
            f"|deviation| = {float(dev.max()):.3g} > tolerance {tol:.3g} (rtol {rtol:g} x max "
            f"|J| {scale:.3g} + atol {atol:g}), at J[{', '.join(map(str, at))}] (y axes then p "
            f"axes): form {got[at]:.6g}, {what} {want[at]:.6g}")


def check_rule(primitive_or_fn, *example_args, index=None, rtol=None, atol=None, **params):
    """Checks a registered rule against the primitive's own derivatives; raises if it is wrong.

    For each checked operand ``index`` (the parameter ``p``), the rule registered for the
    primitive that consumes ``example_args[index]`` is run (once eagerly and once under
    ``jax.jit``, as the structured method runs it), and

    * its result is a list of one :class:`ntkc.Form` per output of the primitive (or None: the
      rule declines, which is an error for an ``index`` you asked for explicitly);
    * each Form is well formed: a non-empty ``structure``; one ``out_labels`` label per axis of
      its output and one ``param_labels`` label per axis of ``p``, no label repeated in either;
      one label per factor axis (a :class:`ntkc.OneHot` factor: one per index axis plus the
      one-hot axis, over integer indices); floating-point factors; and every label of one size
      wherever it appears;
    * the Jacobian of each Form in ``p`` (by :func:`apply_form`) equals ``jax.jacfwd`` and
      ``jax.jacrev`` of the primitive in ``p`` (labels only on ``y`` broadcast), within
      ``atol + rtol * max|J|``;
    * the rule gives the same factors under ``jax.jit`` as eagerly (it must not compute on
      operand values with numpy or Python control flow).

    Args:
      primitive_or_fn: a primitive (``jax.extend.core.Primitive``, bound with ``**params``) or a
        function of the operands whose first equation consuming ``example_args[index]`` is the
        primitive (``lambda x, w: x @ w`` for ``dot_general``; it is traced with jit disabled, so
        ``jnp`` wrappers inline). For a built-in primitive prefer its ``lax`` function
        (``lax.mul``): the parameters JAX binds it with vary between releases.
      *example_args: example operands (arrays); ``p`` is ``example_args[index]``.
      index: the operand to check as ``p``: an int, a sequence of ints, or None (the default)
        for every floating-point operand; with None, operands where the rule declines are
        skipped, but at least one must be checked.
      rtol, atol: tolerances of the Jacobian comparison (default ``1e-5`` for float32 and
        ``1e-10`` for float64 operands).
      **params: the primitive's parameters, for ``bind`` (or keyword arguments of the function).

    Returns:
      True when every check passes.

    Raises:
      AssertionError: naming the primitive, the operand, the output and what is wrong (a
        label and axis, or the largest deviation and where it is).

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> ntkc.testing.check_rule(lambda x, w: x @ w, jnp.ones((2, 3)), jnp.ones((3, 4)), index=1)
      True
    """
    import jax.numpy as jnp

    fn, prim = _rule_fn(primitive_or_fn, params)
    args = [a if isinstance(a, (jax.Array, np.ndarray)) else jnp.asarray(a) for a in example_args]
    floating = [i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.inexact)]
    explicit = index is not None
    if index is None:
        indices = floating
    else:
        indices = [index] if isinstance(index, int) else list(index)
    assert indices, "check_rule: no floating-point operand to check as p"
    for i in indices:
        if not -len(args) <= i < len(args):
            raise IndexError(f"check_rule: index {i} is out of range for {len(args)} operands")
    checked = []
    for i in indices:
        i = i % len(args)
        if _check_one(fn, prim, args, i, explicit, rtol, atol):
            checked.append(i)
    name = prim.name if prim is not None else getattr(primitive_or_fn, "__name__", "fn")
    assert checked, (f"check_rule({name}): the rule declined (returned None) for every operand "
                     f"{indices}; nothing was checked")
    return True


def _check_one(fn, prim, args, index, explicit, rtol, atol) -> bool:
    """Checks the rule with ``args[index]`` as p; False when it declines (and may)."""
    import functools

    import jax.numpy as jnp

    try:
        forms, eqn, outs = rule_forms(fn, args, index)
    except LookupError as err:
        raise AssertionError(f"check_rule: {err}") from None
    except Exception as err:
        raise AssertionError(
            f"check_rule: tracing the primitive on the example operands or running its rule with "
            f"operand {index} as p failed: {type(err).__name__}: {err}") from err
    name = eqn.primitive.name
    where = f"rule of {name!r} with operand {index} as p"
    if prim is not None:
        assert eqn.primitive is prim, f"{where}: traced to {name!r}, not {prim.name!r}"
    if forms is None:
        assert not explicit, (f"{where}: the rule declined (returned None); the structured "
                              "method would use the dense fallback")
        return False
    assert isinstance(forms, (list, tuple)), (
        f"{where}: the rule returned {type(forms).__name__}, expected a list of one ntkc.Form "
        "per output, or None")
    assert len(forms) == len(outs), (
        f"{where}: the rule returned {len(forms)} Form(s) for a primitive with {len(outs)} "
        "output(s): one Form per output")
    p_shape = tuple(np.shape(args[index]))
    for k, (form, y) in enumerate(zip(forms, outs)):
        _check_form_labels(form, k, tuple(np.shape(y)), p_shape, where)

    p0 = args[index]
    dtype = jnp.result_type(p0)
    default = 1e-10 if dtype == jnp.float64 else 1e-5
    rtol = default if rtol is None else rtol
    atol = default if atol is None else atol

    def prim_in_p(ops, p):
        ops = list(ops)
        ops[index] = p
        out = fn(*ops)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    # One jitted program (one compilation): the rule runs under jit, as in the pipeline, and the
    # Jacobians of the primitive and of the forms are computed next to it. The references at
    # full precision (on GPUs the default float32 matmul is TF32).
    static = {}

    def stage(name, thunk):
        try:
            return thunk()
        except Exception as err:
            static["failed"] = (name, err)
            raise

    def traced(ops):
        fs = stage("jit", lambda: rule_forms(fn, list(ops), index)[0])
        static["forms"] = fs
        if fs is None:
            return None
        factors = [[jnp.asarray(a) for a, _ in f.factors] for f in fs]
        with jax.default_matmul_precision("highest"):
            p = ops[index]
            fwd = stage("jacfwd", lambda: jax.jacfwd(functools.partial(prim_in_p, ops))(p))
            rev = stage("jacrev", lambda: jax.jacrev(functools.partial(prim_in_p, ops))(p))
            jac_forms = [stage(("form", k), lambda f=f: jax.jacfwd(functools.partial(apply_form, f))(p))
                         for k, f in enumerate(fs)]
        return factors, fwd, rev, jac_forms

    try:
        result = jax.jit(traced)(args)
    except Exception as err:
        stage_name, cause = static.get("failed", ("jit", err))
        why = f"{type(cause).__name__}: {' '.join(str(cause).split())[:500]}"
        if stage_name == "jit":
            message = f"the rule fails under jax.jit ({why}); rules run on tracers, so compute with jnp"
        elif stage_name == "jacfwd":
            message = f"jax.jacfwd of the primitive failed ({why}); does it have a JVP rule?"
        elif stage_name == "jacrev":
            message = (f"jax.jacrev of the primitive failed ({why}); does it have a transpose "
                       "rule (and a batching rule: jacrev vmaps the pullback)?")
        else:
            message = f"output {stage_name[1]}: evaluating the Form failed ({why})"
        raise AssertionError(f"{where}: {message}") from err
    assert static["forms"] is not None, f"{where}: the rule declines under jax.jit but not eagerly"
    factors, jac_fwd, jac_rev, jac_forms = result
    for k, (f_eager, f_jit) in enumerate(zip(forms, static["forms"])):
        assert f_jit.spec == f_eager.spec, (
            f"{where}, output {k}: the Form's labels differ under jax.jit ({f_jit.spec}) and "
            f"eagerly ({f_eager.spec})")
        for i, ((a, _), b) in enumerate(zip(f_eager.factors, factors[k])):
            assert np.allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-12, equal_nan=True), (
                f"{where}, output {k}: factor {i} differs under jax.jit")

    for k, form in enumerate(forms):
        want = tuple(np.shape(outs[k])) + p_shape
        jac_form = jac_forms[k]
        present = set(form.param_labels) | {
            l for a, ls in form.factors for l in _factor_shape(a, ls)[0]}
        for d, label in enumerate(form.out_labels):
            assert jac_form.shape[d] == want[d] or (jac_form.shape[d] == 1 and label not in present), (
                f"{where}, output {k}: y axis {d} (label {label!r}) has size "
                f"{jac_form.shape[d]} in the Form but {want[d]} in the output")
        jac_form = np.broadcast_to(np.asarray(jac_form, np.float64), want)
        _compare(k, jac_form, jac_fwd[k], "jax.jacfwd", where, rtol, atol)
        _compare(k, jac_form, jac_rev[k], "jax.jacrev", where, rtol, atol)
    return True
