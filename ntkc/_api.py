"""The public entry points: ``ntk_fn`` and the neural-tangents-compatible ``empirical_ntk_fn``.

Argument checks happen here, once per input signature, outside ``jit``; the kernel itself is one
jitted program per signature, cached.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import warnings
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ntkc._axes import make_kernel_axes
from ntkc._problem import Batching, Config, Problem, merge_kwargs, split_static
from ntkc import _plan, pipeline
from ntkc.ir import Plan
from ntkc.passes.cost import Cost
from ntkc.passes.path import PathMemoryError
from ntkc import _auto, _split
from ntkc.methods import jacobian, mixed, ntvp

METHODS = ("auto", "structured", "jacobian", "ntvp")

_KERNELS: dict[str, Callable[[Problem], list]] = {
    "jacobian": jacobian.kernel,
    "ntvp": ntvp.kernel,
    "structured": pipeline.kernel,
}
_KERNELS["mixed"] = lambda prob: mixed.kernel(prob, _KERNELS)


class NtkImplementation(enum.IntEnum):
    """neural-tangents' implementation numbers, accepted by :func:`empirical_ntk_fn`."""

    AUTO = 0
    JACOBIAN_CONTRACTION = 1
    NTK_VECTOR_PRODUCTS = 2
    STRUCTURED_DERIVATIVES = 3


_IMPLEMENTATION_METHOD = {
    NtkImplementation.AUTO: "auto",
    NtkImplementation.JACOBIAN_CONTRACTION: "jacobian",
    NtkImplementation.NTK_VECTOR_PRODUCTS: "ntvp",
    NtkImplementation.STRUCTURED_DERIVATIVES: "structured",
}


def check_method(method):
    """A method name, or a pytree of names that is a prefix of params (a method per leaf)."""
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not one of {', '.join(map(repr, METHODS))}")
        return method
    leaves = jax.tree.leaves(method)
    if not leaves:
        raise ValueError(f"method={method!r}: a pytree of methods needs at least one leaf")
    for m in leaves:
        if m not in METHODS[1:]:
            raise ValueError(f"method: a per-leaf method must be one of "
                             f"{', '.join(map(repr, METHODS[1:]))}, got {m!r}")
    return method


def _per_leaf_methods(config: Config, method, params) -> Config:
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
    return dataclasses.replace(config, method="mixed", leaf_methods=per_leaf)


# ----------------------------------------------------------------------------- argument checks


def _describe(tree) -> str:
    shapes = [tuple(np.shape(l)) for l in jax.tree.leaves(tree)]
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)


def check_params(params) -> None:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if not leaves:
        raise ValueError(f"params has no array leaves (got {params!r}); the NTK needs parameters")
    for path, leaf in leaves:
        dtype = getattr(leaf, "dtype", None) or np.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"params{jax.tree_util.keystr(path)} has dtype {dtype}; the NTK is a derivative "
                "with respect to params, so every params leaf must be floating point"
            )


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


def _output_shapes(f, params, x, kwargs, name):
    try:
        out = jax.eval_shape(lambda p, x: f(p, x, **kwargs), params, x)
    except Exception as err:  # the user's function rejected the input: say which one
        call = f"f(params, {name}, **kwargs)" if kwargs else f"f(params, {name})"
        raise ValueError(
            f"{call} failed for {name} of shape {_describe(x)}: {type(err).__name__}: {err}"
        ) from err
    for leaf in jax.tree.leaves(out):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(f"f(params, {name}) returns a leaf of dtype {leaf.dtype}; "
                            "outputs must be floating point")
    return out


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


def _check_example_outputs(f, params, x, kwargs, batching: Batching, out) -> None:
    """Checks ``out_axes`` by shape: ``f`` on one example (a batch of one along ``in_axes``) must
    return ``out`` with size 1 along ``out_axes``, which is what per-example Jacobians rely on."""
    leaves, treedef = jax.tree.flatten((x, kwargs))
    one = [
        jax.ShapeDtypeStruct(tuple(1 if d == ax else n for d, n in enumerate(np.shape(leaf))),
                             leaf.dtype)
        for leaf, ax in zip(leaves, batching.inputs) if ax is not None
    ]

    def f_one(params, batched):
        it = iter(batched)
        full = [leaf if ax is None else next(it) for leaf, ax in zip(leaves, batching.inputs)]
        x, kw = jax.tree.unflatten(treedef, full)
        return jax.tree.leaves(f(params, x, **kw))

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


def _signature(tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple(
        (np.shape(l), str(getattr(l, "dtype", None) or np.result_type(l))) for l in leaves
    )


# ----------------------------------------------------------------------------- the kernel


def _compute(f, x1, x2, params, dyn1, dyn2, config: Config):
    kwargs1 = merge_kwargs(config.static_kwargs1, dyn1)
    kwargs2 = merge_kwargs(config.static_kwargs2, dyn2)
    if config.read_rng and kwargs1.get("rng") is not None:
        key1, key2 = read_keys(kwargs1["rng"], kwargs2["rng"], config.read_rng == "pair", x1, x2)
        kwargs1, kwargs2 = {**kwargs1, "rng": key1}, {**kwargs2, "rng": key2}
    prob = Problem(f, x1, x1 if config.x2_is_x1 else x2, params, kwargs1, kwargs2, config)
    leaves = _KERNELS[config.method](prob)
    if config.by_param:  # per output leaf, a pytree shaped like params
        param_def = jax.tree.structure(params)
        leaves = [jax.tree_util.tree_unflatten(param_def, per_leaf) for per_leaf in leaves]
    return jax.tree_util.tree_unflatten(config.out_treedef, leaves)


def ntk_fn(
    f: Callable,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    method: str = "auto",
    strict: bool = False,
    memory_limit: int | None = None,
    by_param: bool = False,
) -> "KernelFunction":
    """Returns ``kernel_fn(x1, x2, params, **kwargs)``, the empirical NTK of ``f(params, x)``.

    Args:
      f: the function, ``f(params, x, **kwargs) -> array or pytree of arrays``.
      trace_axes: output axes summed over the pair and divided by their size (a mean); they are
        absent from the kernel. Default ``(-1,)``.
      diagonal_axes: output axes of which only the diagonal is kept; they appear once.
      vmap_axes: ``None`` (the batch is one example), an int (the batch axis of inputs and
        outputs), or ``(in_axes, out_axes, kwargs_axes)``: certifies that examples do not
        interact, so that Jacobians are computed per example.
      method: ``"auto"``, ``"structured"``, ``"jacobian"`` or ``"ntvp"``.
      strict: raise instead of falling back to a dense rule for a primitive with no rule.
      memory_limit: bytes the program's working set may take (estimated from shapes: the
        per-example Jacobians, the VJPs, or the structured operands and largest step; the
        kernel itself not counted). The planner picks contraction orders whose every step fits,
        a method that fits (``"auto"``), or else computes the kernel in blocks of examples that
        fit (under ``vmap_axes``); ``PathMemoryError`` when nothing does.
      by_param: return each parameter leaf's contribution instead of their sum: per output
        leaf, a pytree shaped like ``params`` whose leaves sum to the kernel.

    Returns:
      ``kernel_fn(x1, x2, params, **kwargs)``; ``x2=None`` means ``x1``. For an output leaf of
      shape ``(N, X, O)`` and the defaults the kernel has shape ``(N1, N2, X1, X2)``: axes that
      are not traced appear twice, interleaved, diagonal axes once. A pytree output gives a pytree
      of kernels. Jitted and cached per input signature.

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
      >>> params = {"w": jnp.ones((3, 8)), "v": jnp.ones((8, 2))}
      >>> ntkc.ntk_fn(f, method="jacobian")(jnp.ones((4, 3)), None, params).shape
      (4, 4)
    """
    return KernelFunction(f, trace_axes, diagonal_axes, vmap_axes, method, strict, memory_limit,
                          by_param)


class KernelFunction:
    """The kernel function returned by :func:`ntk_fn`: ``kernel_fn(x1, x2, params, **kwargs)``.

    Checks its arguments once per input signature (outside ``jit``) and runs one jitted program
    per signature.
    """

    def __init__(self, f, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None, method="auto",
                 strict=False, memory_limit=None, by_param=False):
        check_method(method)
        if not callable(f):
            raise TypeError(f"f must be callable, got {f!r}")
        if memory_limit is not None and (not isinstance(memory_limit, int) or memory_limit <= 0):
            raise ValueError(f"memory_limit must be a positive int (bytes) or None, got {memory_limit!r}")
        self.f = f
        self.trace_axes, self.diagonal_axes, self.vmap_axes = trace_axes, diagonal_axes, vmap_axes
        self.method, self.strict, self.memory_limit = method, strict, memory_limit
        self.by_param = bool(by_param)
        self._jitted = jax.jit(functools.partial(_compute, f), static_argnames=("config",))
        self._configs: dict[Any, Config] = {}
        self.__doc__ = f"Empirical NTK of {getattr(f, '__name__', f)!s} (method={method!r})."

    def _resolve(self, x1, x2, params, kwargs1, kwargs2, static1, static2) -> Config:
        f, method = self.f, self.method
        check_params(params)
        x2_is_x1 = x2 is None
        if not x2_is_x1 and jax.tree.structure(x1) != jax.tree.structure(x2):
            raise ValueError(
                f"x1 and x2 have different structures: {jax.tree.structure(x1)} and "
                f"{jax.tree.structure(x2)}"
            )
        out1 = _output_shapes(f, params, x1, kwargs1, "x1")
        out2 = out1 if x2_is_x1 else _output_shapes(f, params, x2, kwargs2, "x2")
        treedef = jax.tree.structure(out1)
        if jax.tree.structure(out2) != treedef:
            raise ValueError("f(params, x1) and f(params, x2) return different output structures")
        axes = tuple(
            make_kernel_axes(o1.shape, o2.shape, self.trace_axes, self.diagonal_axes, "output")
            for o1, o2 in zip(jax.tree.leaves(out1), jax.tree.leaves(out2))
        )
        batching = resolve_batching(
            self.vmap_axes, x1, x1 if x2_is_x1 else x2, kwargs1, kwargs2, out1, out2
        )
        if batching is not None:
            _check_example_outputs(f, params, x1, kwargs1, batching, out1)
        for k, ax in enumerate(axes):
            if batching is not None and batching.outputs[k] not in ax.free:
                if batching.size1 != batching.size2:
                    raise ValueError(
                        "x1 and x2 hold different numbers of examples "
                        f"({batching.size1} and {batching.size2}) but the batch axis is traced "
                        "or diagonal"
                    )
        config = Config(
            method=method, axes=axes, out_treedef=treedef, batching=batching,
            x2_is_x1=x2_is_x1, static_kwargs1=static1, static_kwargs2=static2,
            strict=self.strict, memory_limit=self.memory_limit, by_param=self.by_param,
        )
        if not isinstance(method, str):
            config = _per_leaf_methods(config, method, params)
        if method == "auto" or self.memory_limit is not None:
            args = (x1, x2, params, split_static(kwargs1, "kwargs")[0],
                    split_static(kwargs2, "kwargs")[0])
            req = _request(f, config, args)
            if method == "auto":
                resolved = _auto.resolve(req, config)
                if resolved is None:
                    raise _split.NoFit(config, "no method's estimated working set fits")
                config = resolved
            else:
                assignment = config.leaf_methods or (config.method,) * len(req.leaf_sizes)
                peak = req.peak(assignment)
                if peak > self.memory_limit or ("structured" in assignment and req.terms is None):
                    raise _split.NoFit(config, f"method {config.method!r} needs about "
                                       f"{peak:.3g} bytes for the whole batch")
        return config

    @staticmethod
    def _parse(x1, x2, kwargs):
        """``(x2, kwargs1, kwargs2, read_rng)``: keyword arguments split between the sides."""
        if x1 is None:
            raise ValueError("x1 is None; pass the inputs as x1 (x2=None means x2 = x1)")
        read_rng = None
        if x2 is not None and "rng" in kwargs:
            pair = isinstance(kwargs["rng"], tuple) and len(kwargs["rng"]) == 2
            read_rng = "pair" if pair else "key"
        kwargs1, kwargs2, differ = split_kwargs(kwargs, x2 is None)
        if x2 is None and differ:  # the two sides differ by their keyword arguments
            x2 = x1
        return x2, kwargs1, kwargs2, read_rng

    def prepare(self, x1, x2, params, **kwargs):
        """Checks the arguments; returns ``(config, args)`` such that
        ``_compute(f, *args, config=config)`` is the kernel (``config.block``: computed in
        blocks of that many examples, see ``__call__``)."""
        x2, kwargs1, kwargs2, read_rng = self._parse(x1, x2, kwargs)
        dyn1, static1 = split_static(kwargs1, "kwargs")
        dyn2, static2 = split_static(kwargs2, "kwargs")
        key = (_signature((x1, x2, params, dyn1, dyn2)), static1, static2, read_rng)
        config = self._configs.get(key)
        if config is None:
            try:
                config = self._resolve(x1, x2, params, kwargs1, kwargs2, static1, static2)
            except _split.NoFit as err:
                config = self._block_config(err, x1, x2, params, kwargs)
            config = self._configs[key] = dataclasses.replace(config, read_rng=read_rng)
        return config, (x1, x2, params, dyn1, dyn2)

    def _block_config(self, err, x1, x2, params, kwargs) -> Config:
        """The largest block of examples (halving) for which a method fits ``memory_limit``."""
        _split.check_splittable(err.config, kwargs, err.why, self.memory_limit)
        batching = err.config.batching
        size = max(batching.size1, batching.size2)
        while size > 1:
            size = (size + 1) // 2
            xa, kwa = _split.take(x1, kwargs, batching.inputs, 0, size)
            # x2 = x1 still pairs different blocks: check the costlier case of distinct inputs
            xb = _split.take(x1 if x2 is None else x2, kwargs, batching.inputs, 0, size)[0]
            xb, kw1, kw2, _ = self._parse(xa, xb, kwa)
            try:
                self._resolve(xa, xb, params, kw1, kw2, split_static(kw1, "kwargs")[1],
                              split_static(kw2, "kwargs")[1])
            except _split.NoFit:
                continue
            return dataclasses.replace(err.config, method="blocks", block=size)
        raise PathMemoryError(f"memory_limit={self.memory_limit}: {err.why}, and not even for "
                              "one example at a time")

    def __call__(self, x1, x2, params, **kwargs):
        config, args = self.prepare(x1, x2, params, **kwargs)
        if config.block:
            return self._blockwise(config, x1, x2, params, kwargs)
        return self._jitted(*args, config=config)

    def _blockwise(self, config, x1, x2, params, kwargs):
        """The kernel from blocks of ``config.block`` examples, each a call that fits."""
        batching = config.batching
        rows = _split.blocks(batching.size1, config.block)
        cols = rows if x2 is None else _split.blocks(batching.size2, config.block)
        every_pair = any(batching.outputs[k] in a.free for k, a in enumerate(config.axes))
        grid = {}
        for i, (a0, a1) in enumerate(rows):
            xa, kwa = _split.take(x1, kwargs, batching.inputs, a0, a1)
            for j, (b0, b1) in enumerate(cols):
                if i != j and not every_pair:
                    continue
                if x2 is None and i == j:
                    grid[i, j] = self(xa, None, params, **kwa)
                    continue
                xb, kwb = _split.take(x1 if x2 is None else x2, kwargs, batching.inputs, b0, b1)
                grid[i, j] = self(xa, xb, params, **{k: (kwa[k], kwb[k]) for k in kwargs})
        return _split.assemble(config, grid, rows, cols)


def estimate_methods(f, x1, x2, params, **options) -> dict[str, float]:
    """The FLOP estimates ``method="auto"`` compares: each method alone, and ``"mixed"`` when
    a per-leaf mix is cheaper (for benchmarks and tools).

    ``options`` are :func:`ntk_fn`'s (``method`` ignored) plus ``kwargs`` for ``f``.
    """
    kwargs = dict(options.pop("kwargs", None) or {})
    options.pop("method", None)
    kfn = KernelFunction(f, method="jacobian", **options)
    config, args = kfn.prepare(x1, x2, params, **kwargs)
    return _auto.method_costs(_request(f, config, args, warn=False))


def _request(f, config, args, warn=True):
    x1, x2, params, dyn1, dyn2 = args
    records = _auto.record_structured(functools.partial(_compute, f), config, args, warn)
    return _auto.request(f, config, params, x1, x1 if x2 is None else x2,
                         merge_kwargs(config.static_kwargs1, dyn1),
                         merge_kwargs(config.static_kwargs2, dyn2), records)


def plan(f: Callable, x1, x2, params, *, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None,
         method="auto", strict: bool = False, memory_limit: int | None = None,
         kwargs: dict | None = None) -> Plan:
    """The structured program for these inputs, before emission: a :class:`ntkc.ir.Plan`.

    Traces abstractly (no compilation). Arguments are those of :func:`ntk_fn` and of its kernel
    function; ``kwargs`` are ``f``'s keyword arguments. ``plan.method`` is the method the kernel
    function would use (``method="auto"`` resolved); the terms are always the structured ones.

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
      >>> params = {"w": jnp.ones((3, 8)), "v": jnp.ones((8, 2))}
      >>> p = ntkc.plan(f, jnp.ones((4, 3)), None, params, vmap_axes=0)
      >>> [t.leaf for t in p.terms]
      ["['v']", "['w']"]
    """
    kwargs = dict(kwargs or {})
    check_method(method)
    options = dict(trace_axes=trace_axes, diagonal_axes=diagonal_axes, vmap_axes=vmap_axes,
                   strict=strict)
    chosen = KernelFunction(f, method=method, memory_limit=memory_limit, **options).prepare(
        x1, x2, params, **kwargs)[0]
    blocks = ""
    if chosen.block:  # the plan of one block: what each call of the split kernel runs
        x1 = _split.take(x1, kwargs, chosen.batching.inputs, 0, chosen.block)[0]
        x2 = None if x2 is None else _split.take(x2, kwargs, chosen.batching.inputs, 0,
                                                 chosen.block)[0]
        kwargs = _split.take(x1, kwargs, chosen.batching.inputs, 0, chosen.block)[1]
        chosen = KernelFunction(f, method=method, memory_limit=memory_limit, **options).prepare(
            x1, x2, params, **kwargs)[0]
        blocks = f" in blocks of {chosen.batching.size1} examples"
    structured = KernelFunction(f, method="structured", **options)
    config, args = structured.prepare(x1, x2, params, **kwargs)
    config = dataclasses.replace(config, memory_limit=memory_limit)
    records = _plan.record(functools.partial(_compute, f, config=config), args)
    req = _auto.request(f, config, params, x1, x1 if x2 is None else x2,
                        merge_kwargs(config.static_kwargs1, args[3]),
                        merge_kwargs(config.static_kwargs2, args[4]), records)
    outputs = jax.tree_util.tree_unflatten(config.out_treedef, [0] * config.out_treedef.num_leaves)
    output_names = [jax.tree_util.keystr(p) or "output"
                    for p, _ in jax.tree_util.tree_flatten_with_path(outputs)[0]]
    leaf_names = [jax.tree_util.keystr(p) or "params"
                  for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    leaf_methods = chosen.leaf_methods or (chosen.method,) * len(leaf_names)
    return _plan.build_plan(records, _auto.cotangent_cost(req), chosen.method + blocks,
                            [a.kernel_shape for a in config.axes], output_names, leaf_names,
                            dict(zip(leaf_names, leaf_methods)), _auto.method_costs(req))


def empirical_ntk_fn(
    f: Callable,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    implementation: int | NtkImplementation = NtkImplementation.STRUCTURED_DERIVATIVES,
    _j_rules: bool = True,
    _s_rules: bool = True,
    _fwd: bool | None = None,
) -> Callable:
    """neural-tangents' ``empirical_ntk_fn``, same signature and semantics.

    ``implementation`` takes neural-tangents' ints (0 auto, 1 Jacobian contraction, 2 NTK-vector
    products, 3 structured derivatives) or :class:`NtkImplementation`. The private ``_j_rules``,
    ``_s_rules`` and ``_fwd`` switches are accepted and ignored.
    """
    try:
        implementation = NtkImplementation(implementation)
    except ValueError:
        raise ValueError(
            f"implementation={implementation!r} is not one of 0, 1, 2, 3 "
            f"({', '.join(m.name for m in NtkImplementation)})"
        ) from None
    return ntk_fn(f, trace_axes, diagonal_axes, vmap_axes, _IMPLEMENTATION_METHOD[implementation])
