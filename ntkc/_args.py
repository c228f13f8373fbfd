"""Argument checks of the kernel functions, done once per input signature, outside ``jit``.

``vmap_axes`` and keyword arguments are read exactly as neural-tangents reads them
(``split_kwargs``, ``_read_keys``); every error names the argument and what was wrong.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ntkc import _compat
from ntkc._leaves import replace_leaves
from ntkc._problem import Batching, Config
from ntkc.methods import mixed, registry
from ntkc.passes.independence import check_independent, perturbation_probe
from ntkc.rules.example_axes import Axis


def check_method(method):
    """A method name (``ntkc.METHODS``), or a pytree of per-leaf method names that is a prefix
    of params (a method per leaf)."""
    if isinstance(method, str):
        return registry.check_name(method)
    leaves = jax.tree.leaves(method)
    if not leaves:
        raise ValueError(f"method={method!r}: a pytree of methods needs at least one leaf")
    choices = registry.per_leaf_names()
    for m in leaves:
        if m not in choices:
            raise ValueError(f"method: a per-leaf method must be one of "
                             f"{', '.join(map(repr, choices))}, got {m!r}")
    return method


def per_leaf_methods(config: Config, method, params) -> Config:
    """``method`` given as a pytree (a prefix of params): one method per params leaf."""
    names, treedef = jax.tree.flatten(method)
    try:
        subtrees = treedef.flatten_up_to(params)
    except (ValueError, TypeError):
        raise ValueError(f"method: a pytree of methods must be a prefix of the structure of "
                         f"params, {jax.tree.structure(params)}; got {method!r}") from None
    per_leaf = tuple(m for m, sub in zip(names, subtrees) for _ in jax.tree.leaves(sub))
    if len(set(per_leaf)) == 1:
        return dataclasses.replace(config, method=per_leaf[0])
    return dataclasses.replace(config, method=mixed.NAME, leaf_methods=per_leaf)


def _describe(tree) -> str:
    shapes = [tuple(np.shape(l)) for l in jax.tree.leaves(tree)]
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)


_COMPLEX_RECIPE = (
    "ntkc computes the NTK of real parameters and real outputs, in every method: split a complex "
    "parameter into real leaves and an output into real ones, e.g. params = {'re': w.real, "
    "'im': w.imag} with w = p['re'] + 1j * p['im'] inside f, and return "
    "jnp.stack([y.real, y.imag], -1); the kernel is then that of the real map (Re w, Im w) -> "
    "(Re y, Im y)")


class FlaxCollectionsWarning(UserWarning):
    """params holds Flax collections besides ``"params"`` (``batch_stats``, ``cache``, ...),
    which are then differentiated as parameters. Silence it when that is intended::

        warnings.filterwarnings("ignore", category=ntkc.FlaxCollectionsWarning)
    """


def check_params(params) -> None:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if not leaves:
        raise ValueError(f"params has no array leaves (got {params!r}); the NTK needs parameters")
    for path, leaf in leaves:
        name = f"params{jax.tree_util.keystr(path)}"
        try:
            dtype = leaf_dtype(leaf)
        except TypeError:
            raise TypeError(f"{name} is {leaf!r} of type {type(leaf).__name__}; every params "
                            "leaf must be an array or a Python number (close over anything "
                            "else, e.g. f = lambda p, x: g(p, x, name))") from None
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(f"{name} has dtype {dtype}. " + _COMPLEX_RECIPE)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{name} has dtype {dtype}; the NTK is a derivative "
                "with respect to params, so every params leaf must be floating point"
            )
    _warn_flax_collections(params)


def _warn_flax_collections(params) -> None:
    """A Flax ``variables`` dict passed whole differentiates its other collections too."""
    if not isinstance(params, Mapping) or "params" not in params or len(params) < 2:
        return
    others = sorted(str(k) for k in params if k != "params")
    warnings.warn(
        f"params holds the Flax collections {others} next to 'params': they are differentiated "
        "as if they were parameters (the NTK of a BatchNorm model then includes its running "
        "statistics). To differentiate the parameters only, close over the rest: "
        "f = lambda p, x: model.apply({**variables, 'params': p}, x), then "
        "kernel_fn(x1, x2, variables['params']). If it is intended, silence this with "
        "warnings.filterwarnings('ignore', category=ntkc.FlaxCollectionsWarning)",
        FlaxCollectionsWarning, stacklevel=6)


def leaf_dtype(leaf):
    """The dtype of an array, ShapeDtypeStruct or Python number (TypeError for anything else)."""
    dtype = getattr(leaf, "dtype", None)
    return jnp.dtype(dtype) if dtype is not None else jnp.result_type(leaf)


def kernel_dtype(out, params):
    """The kernel's dtype for an output leaf: its dtype promoted with the params' dtypes."""
    return jnp.result_type(out.dtype, *map(leaf_dtype, jax.tree.leaves(params)))


def split_kwargs(kwargs: dict, x2_is_none: bool):
    """neural-tangents' ``split_kwargs``: a tuple of two gives one item to each side, everything
    else goes to both; ``rng`` with an ``x2`` is resolved inside jit by :func:`read_keys`.

    Returns ``(kwargs1, kwargs2, differ)``; ``differ`` is True when the sides got different items.
    """
    kwargs1, kwargs2, differ = {}, {}, False
    for k, v in kwargs.items():
        if k == "rng" and not x2_is_none and not (isinstance(v, tuple) and len(v) == 2):
            kwargs1[k] = kwargs2[k] = v
        elif isinstance(v, tuple) and len(v) == 2:
            kwargs1[k], kwargs2[k] = v
            differ = True
        else:
            kwargs1[k] = kwargs2[k] = v
    return kwargs1, kwargs2, differ


def _inputs_equal(x1, x2, eps=1e-12):
    """neural-tangents' ``x1_is_x2``: same shapes and values within ``eps``, as a traced bool."""
    l1, l2 = jax.tree.leaves(x1), jax.tree.leaves(x2)
    if len(l1) != len(l2) or any(jnp.shape(a) != jnp.shape(b) for a, b in zip(l1, l2)):
        return jnp.asarray(False)
    same = [
        jnp.all(jnp.abs(a - b) < eps) if jnp.issubdtype(a.dtype, jnp.inexact) else jnp.all(a == b)
        for a, b in zip(l1, l2)
    ]
    return jnp.all(jnp.stack(same)) if same else jnp.asarray(True)


def read_keys(key1, key2, pair: bool, x1, x2):
    """neural-tangents' ``_read_keys``: two keys such that ``(x1 == x2) == (key1 == key2)``.

    A single key (``pair=False``, ``key1 is key2``) gives ``key1`` for x1 and
    ``fold_in(key1, 1)`` for x2 unless the inputs are equal; a pair is kept, with ``key2``
    replaced so that the rule holds.
    """
    same = _inputs_equal(x1, x2)
    if pair:
        new = jnp.where(jnp.all(key1 == key2), jax.random.fold_in(key2, 1), key2)
        return key1, jnp.where(same, key1, new)
    return key1, jnp.where(same, key1, jax.random.fold_in(key1, 1))


def output_shapes(f, params, x, kwargs, name, with_jaxpr=False):
    """f's output shapes for ``x`` (and with ``with_jaxpr``, ``(shapes, f's closed jaxpr)``)."""
    try:
        jaxpr, out = jax.make_jaxpr(lambda p, x: f(p, x, **kwargs), return_shape=True)(params, x)
    except Exception as err:  # the user's function rejected the input: say which one
        call = f"f(params, {name}, **kwargs)" if kwargs else f"f(params, {name})"
        raise ValueError(
            f"{call} failed for {name} of shape {_describe(x)}: {type(err).__name__}: {err}"
        ) from err
    if not jax.tree.leaves(out):
        raise ValueError(f"f(params, {name}) returned {out!r}, with no array in it; f must "
                         "return an array or a pytree of arrays")
    for leaf in jax.tree.leaves(out):
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            raise TypeError(f"f(params, {name}) returns a leaf of dtype {leaf.dtype}. "
                            + _COMPLEX_RECIPE)
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(f"f(params, {name}) returns a leaf of dtype {leaf.dtype}; "
                            "outputs must be floating point")
    return (out, jaxpr) if with_jaxpr else out


def _flat_prefix(prefix, tree, name, what):
    """Broadcasts an axes prefix tree over ``tree``: one axis (or None) per leaf of ``tree``."""
    prefix_leaves, prefix_def = jax.tree_util.tree_flatten(prefix, is_leaf=lambda a: a is None)
    try:
        subtrees = prefix_def.flatten_up_to(tree)
    except (ValueError, TypeError):
        raise ValueError(
            f"vmap_axes: {name}={prefix!r} does not match the structure of {what}, "
            f"{jax.tree.structure(tree)}"
        ) from None
    return [ax for ax, sub in zip(prefix_leaves, subtrees) for _ in jax.tree.leaves(sub)]


def _leaf_names(x, kwargs, name):
    """Readable names of the leaves of ``(x, kwargs)``, e.g. ``x1['a']`` or ``kwargs['mask']``."""
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path((x, kwargs))[0]]
    return [(name if path[0].idx == 0 else "kwargs") + jax.tree_util.keystr(path[1:])
            for path in paths]


def _batch_size(leaves, axes, names):
    size = size_name = None
    out = []
    for leaf, ax, name in zip(leaves, axes, names):
        if ax is None:
            out.append(None)
            continue
        if not isinstance(ax, int) or isinstance(ax, bool):
            raise TypeError(f"vmap_axes: axes must be ints or None, got {ax!r} for {name}")
        shape = np.shape(leaf)
        if not -len(shape) <= ax < max(len(shape), 1) or not shape:
            raise ValueError(
                f"vmap_axes: batch axis {ax} is out of range for {name} of shape {shape}"
            )
        ax %= len(shape)
        if size is not None and shape[ax] != size:
            raise ValueError(
                f"vmap_axes: inputs hold different numbers of examples along their batch axes: "
                f"{size} in {size_name} but {shape[ax]} in {name} (shape {shape}, axis {ax})"
            )
        size, size_name = shape[ax], name
        out.append(ax)
    return size, out


def resolve_batching(vmap_axes, x1, x2, kwargs1, kwargs2, out1, out2) -> Batching | None:
    """``vmap_axes`` checked against the inputs and outputs, as neural-tangents reads it."""
    if vmap_axes is None:
        return None
    if isinstance(vmap_axes, tuple) and len(vmap_axes) == 3:
        in_axes, out_axes, kwargs_axes = vmap_axes
    elif isinstance(vmap_axes, int) and not isinstance(vmap_axes, bool):
        in_axes = out_axes = vmap_axes
        kwargs_axes = {}
    else:
        raise TypeError(
            "vmap_axes must be None, an int, or a triple (in_axes, out_axes, kwargs_axes); "
            f"got {vmap_axes!r}"
        )
    if kwargs_axes is None:
        kwargs_axes = {}
    if not isinstance(kwargs_axes, dict):
        raise TypeError(
            "vmap_axes: kwargs_axes must be a dict from keyword argument names to axes, "
            f"got {kwargs_axes!r}"
        )
    unknown = set(kwargs_axes) - set(kwargs1)
    if unknown:
        raise ValueError(f"vmap_axes: kwargs_axes names {sorted(unknown)}, which are not "
                         f"keyword arguments of this call ({sorted(kwargs1)})")
    prefix = (in_axes, {k: kwargs_axes.get(k) for k in kwargs1})
    axes1 = _flat_prefix(prefix, (x1, kwargs1), "in_axes", "the inputs (x1, kwargs)")
    axes2 = _flat_prefix(prefix, (x2, kwargs2), "in_axes", "the inputs (x2, kwargs)")
    if all(a is None for a in axes1):
        return None
    size1, axes1 = _batch_size(jax.tree.leaves((x1, kwargs1)), axes1,
                               _leaf_names(x1, kwargs1, "x1"))
    size2, axes2 = _batch_size(jax.tree.leaves((x2, kwargs2)), axes2,
                               _leaf_names(x2, kwargs2, "x2"))
    if axes1 != axes2:
        raise ValueError("vmap_axes: x1 and x2 resolve to different batch axes")
    for leaf, ax in zip(jax.tree.leaves((x1, kwargs1)), axes1):
        if ax is not None and not hasattr(leaf, "shape"):
            raise ValueError(f"vmap_axes: a batch axis is given for a non-array input {leaf!r}")

    leaves1, leaves2 = jax.tree.leaves(out1), jax.tree.leaves(out2)
    if isinstance(out_axes, int) and not isinstance(out_axes, bool):
        out_flat = [out_axes] * len(leaves1)
    else:
        out_flat = _flat_prefix(out_axes, out1, "out_axes", "the output of f")
    outputs = []
    for o1, o2, ax in zip(leaves1, leaves2, out_flat):
        if not isinstance(ax, int) or isinstance(ax, bool) or not -o1.ndim <= ax < o1.ndim:
            raise ValueError(
                f"vmap_axes: out_axes gives {ax!r}, which is not an axis of an output of "
                f"shape {o1.shape}"
            )
        ax %= o1.ndim
        if o1.shape[ax] != size1 or o2.shape[ax] != size2:
            raise ValueError(
                f"vmap_axes: output axis {ax} has sizes {o1.shape[ax]} and {o2.shape[ax]} for "
                f"x1 and x2, but the inputs hold {size1} and {size2} examples along in_axes"
            )
        outputs.append(ax)
    return Batching(tuple(axes1), tuple(outputs), size1, size2)


def _on_batched(f, x, kwargs, batching: Batching):
    """``(fn, batched)``: ``fn(params, batched) -> f's output leaves``, a function of the batched
    leaves of ``(x, kwargs)`` alone (the others closed over), and those leaves."""
    leaves, treedef = jax.tree.flatten((x, kwargs))

    positions = [i for i, ax in enumerate(batching.inputs) if ax is not None]

    def fn(params, batched):
        x, kw = jax.tree.unflatten(treedef, replace_leaves(leaves, positions, batched))
        return jax.tree.leaves(f(params, x, **kw))

    return fn, [leaves[i] for i in positions]


def check_example_outputs(f, params, x, kwargs, batching: Batching, out) -> None:
    """Checks ``out_axes`` by shape: ``f`` on one example (a batch of one along ``in_axes``) must
    return ``out`` with size 1 along ``out_axes``, which is what per-example Jacobians rely on."""
    f_one, batched = _on_batched(f, x, kwargs, batching)
    one = [jax.ShapeDtypeStruct(tuple(1 if d == ax else n for d, n in enumerate(np.shape(leaf))),
                                leaf.dtype)
           for leaf, ax in zip(batched, [a for a in batching.inputs if a is not None])]
    try:
        outs = jax.eval_shape(f_one, params, one)
    except Exception as err:
        raise ValueError(
            "vmap_axes: f(params, x1) fails on a single example (a batch of one along in_axes), "
            f"which per-example Jacobians need: {type(err).__name__}: {err}"
        ) from err
    for o, o_one, ax in zip(jax.tree.leaves(out), outs, batching.outputs):
        expected = o.shape[:ax] + (1,) + o.shape[ax + 1 :]
        if o_one.shape != expected:
            raise ValueError(
                f"vmap_axes: out_axes gives axis {ax} for an output of shape {o.shape}, but one "
                f"example along in_axes gives an output of shape {o_one.shape}, not {expected}"
            )


def check_independent_examples(f, params, x, kwargs, batching: Batching, jaxpr=None) -> None:
    """Checks ``vmap_axes``' certificate on ``f``'s jaxpr over the whole batch: no output example
    may depend on another input example (``ntkc.passes.independence``).

    ``jaxpr``: f's jaxpr over ``(params, x)`` with ``kwargs`` closed over, as the argument checks
    traced it; used when no keyword argument is batched (else f is traced over the batched
    leaves)."""
    n_params, n_x = len(jax.tree.leaves(params)), len(jax.tree.leaves(x))
    fn, batched = _on_batched(f, x, kwargs, batching)
    if jaxpr is None or any(ax is not None for ax in batching.inputs[n_x:]):
        jaxpr = jax.make_jaxpr(fn)(params, batched)
        axes = [a for a in batching.inputs if a is not None]
    else:
        axes = list(batching.inputs[:n_x])
    in_states = [None] * n_params + [None if a is None else Axis(a) for a in axes]
    probe = None
    concrete = not any(isinstance(l, jax.ShapeDtypeStruct) for l in jax.tree.leaves((params, x)))
    if concrete and not _compat.is_traced((params, x, kwargs)):
        probe = perturbation_probe(lambda b: fn(params, b), batched,
                                   [a for a in batching.inputs if a is not None], batching.outputs)
    check_independent(jaxpr, in_states, batching.outputs, probe)


def _dtype_name(leaf) -> str:
    try:
        return str(getattr(leaf, "dtype", None) or np.result_type(leaf))
    except TypeError:  # not an array (a string, ...): the argument checks say what is wrong
        return type(leaf).__name__


def signature(tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((np.shape(l), _dtype_name(l)) for l in leaves)


def check_inputs(x, name) -> None:
    """A list or tuple of Python numbers is a pytree of scalar inputs, not an array: say so."""
    if isinstance(x, (list, tuple)) and any(
            isinstance(l, (bool, int, float, complex)) for l in jax.tree.leaves(x)):
        raise TypeError(f"{name} is a {type(x).__name__} of Python numbers; pass an array, e.g. "
                        f"jnp.asarray({name}) (a {type(x).__name__} is a pytree: each number "
                        "would be an input of its own)")


def check_mapping(kwargs, name="kwargs") -> dict:
    """``kwargs`` as a dict, or a clear error when it is not a mapping."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"{name} must be a mapping of f's keyword arguments to their values, "
                        f"got {type(kwargs).__name__} {kwargs!r}")
    return dict(kwargs)


def check_bytes(value, name, allow_zero=False):
    """A byte count: a positive (or non-negative) int or None; bools are refused."""
    low = 0 if allow_zero else 1
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < low):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {kind} int (bytes) or None, got {value!r}")
    return value
