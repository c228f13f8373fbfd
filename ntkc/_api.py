"""The public entry points: ``ntk_fn``, ``plan`` and the neural-tangents-compatible
``empirical_ntk_fn``.

Arguments are checked (``ntkc._args``) and the method resolved (``ntkc._auto``) once per input
signature, outside ``jit``; the kernel itself is one jitted program per signature, cached.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Any, Callable

import jax

from ntkc import _auto, _compat, _plan, _slicing, _split
from ntkc._args import (check_example_outputs, check_independent_examples,
                        check_bytes, check_inputs, check_mapping, check_method,
                        check_params, kernel_dtype,
                        output_shapes, per_leaf_methods, read_keys, resolve_batching, signature,
                        split_kwargs)
from ntkc._axes import make_kernel_axes
from ntkc._problem import Config, Problem, merge_kwargs, split_static
from ntkc.ir import Plan, Split
from ntkc.passes.path import PathMemoryError
from ntkc.methods import jacobian, ntvp, registry, structured


class NtkImplementation(enum.IntEnum):
    """neural-tangents' implementation numbers, accepted by :func:`empirical_ntk_fn`."""

    AUTO = 0
    JACOBIAN_CONTRACTION = 1
    NTK_VECTOR_PRODUCTS = 2
    STRUCTURED_DERIVATIVES = 3


_IMPLEMENTATION_METHOD = {
    NtkImplementation.AUTO: registry.AUTO,
    NtkImplementation.JACOBIAN_CONTRACTION: jacobian.NAME,
    NtkImplementation.NTK_VECTOR_PRODUCTS: ntvp.NAME,
    NtkImplementation.STRUCTURED_DERIVATIVES: structured.NAME,
}


# ----------------------------------------------------------------------------- the kernel


def _compute(f, x1, x2, params, dyn1, dyn2, config: Config):
    kwargs1 = merge_kwargs(config.static_kwargs1, dyn1)
    kwargs2 = merge_kwargs(config.static_kwargs2, dyn2)
    if config.read_rng and kwargs1.get("rng") is not None:
        key1, key2 = read_keys(kwargs1["rng"], kwargs2["rng"], config.read_rng == "pair", x1, x2)
        kwargs1, kwargs2 = {**kwargs1, "rng": key1}, {**kwargs2, "rng": key2}
    prob = Problem(f, x1, x1 if config.x2_is_x1 else x2, params, kwargs1, kwargs2, config)
    return finish(registry.get(config.method).kernel(prob), params, config)


def finish(leaves: list, params, config: Config):
    """A method's kernel per output leaf as the call returns it: one dtype, by parameter leaf
    with ``by_param``, in the layout of f's output pytree."""
    if config.dtypes:  # one dtype whatever the method (jacobian's follows params', others' f's)
        leaves = [jax.tree.map(lambda k, d=d: k.astype(d), leaf)
                  for leaf, d in zip(leaves, config.dtypes)]
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
      method: a name in ``ntkc.METHODS``: ``"auto"`` (the planner chooses, per parameter
        leaf), or a registered method (built in: ``"structured"``, ``"jacobian"``,
        ``"ntvp"``); or a pytree of method names, a prefix of params: a method per leaf.
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
                 strict=False, memory_limit=None, by_param=False, _split_outputs=True,
                 _check_memory=True):
        check_method(method)
        if not callable(f):
            raise TypeError(f"f must be callable, got {f!r}")
        check_bytes(memory_limit, "memory_limit")
        self.f = f
        self.trace_axes, self.diagonal_axes, self.vmap_axes = trace_axes, diagonal_axes, vmap_axes
        self.method, self.strict, self.memory_limit = method, strict, memory_limit
        self.by_param = bool(by_param)
        self._jit_by_options: dict[tuple, Callable] = {}
        self._configs: dict[Any, Config] = {}
        self._records: dict[Any, list | None] = {}
        self._split_outputs = _split_outputs  # False for the kernel of one chunk of outputs
        self._check_memory = _check_memory  # False where only the configuration is wanted
        self._chunk_fns: dict[tuple[int, int], KernelFunction] = {}
        self._chunk_sides_by_size: dict[tuple[int, int], _split.FactoredChunks] = {}
        self.__doc__ = f"Empirical NTK of {getattr(f, '__name__', f)!s} (method={method!r})."

    def _resolve(self, x1, x2, params, kwargs1, kwargs2, static1, static2) -> Config:
        f, method = self.f, self.method
        check_params(params)
        check_inputs(x1, "x1")
        check_inputs(x2, "x2")
        x2_is_x1 = x2 is None
        if not x2_is_x1 and jax.tree.structure(x1) != jax.tree.structure(x2):
            raise ValueError(
                f"x1 and x2 have different structures: {jax.tree.structure(x1)} and "
                f"{jax.tree.structure(x2)}"
            )
        out1, jaxpr1 = output_shapes(f, params, x1, kwargs1, "x1", with_jaxpr=True)
        out2, jaxpr2 = ((out1, jaxpr1) if x2_is_x1
                        else output_shapes(f, params, x2, kwargs2, "x2", with_jaxpr=True))
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
            check_example_outputs(f, params, x1, kwargs1, batching, out1)
            check_independent_examples(f, params, x1, kwargs1, batching, jaxpr1)
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
            compiler_options=_compat.compiler_options(jaxpr1),
            dtypes=tuple(kernel_dtype(o, params) for o in jax.tree.leaves(out1)),
        )
        if not isinstance(method, str):
            config = per_leaf_methods(config, method, params)
        if method == structured.NAME and self.memory_limit is None and self._check_memory:
            self._check_device_memory(config, x1, x2, params, kwargs1, kwargs2, jaxpr1, jaxpr2)
        if method == registry.AUTO or self.memory_limit is not None:
            args = (x1, x2, params, split_static(kwargs1, "kwargs")[0],
                    split_static(kwargs2, "kwargs")[0])
            cost_model = self._cost_model(config, args, jaxprs=(jaxpr1, jaxpr2))
            if method == registry.AUTO:
                resolved = _auto.resolve(cost_model, config)
                if resolved is None:
                    raise _split.NoFit(config, "no method's estimated working set fits")
                config = resolved
            else:
                assignment = config.leaf_methods or (config.method,) * len(cost_model.leaf_sizes)
                peak = cost_model.peak(assignment)
                if cost_model.terms is None and any(registry.get(m).needs_plan
                                                    for m in assignment):
                    raise _split.NoFit(config, "no contraction order of the structured method "
                                       "fits for the whole batch")
                if peak > self.memory_limit:
                    raise _split.NoFit(config, f"method {config.method!r} needs about "
                                       f"{peak:.3g} bytes for the whole batch")
        return config

    def _check_device_memory(self, config, x1, x2, params, kwargs1, kwargs2, jaxpr1, jaxpr2):
        """Without ``memory_limit``, the structured program whose estimated working set exceeds
        the device's memory (a dense fallback through a big loop can ask for terabytes) is
        refused with the estimate, before XLA is asked for the memory."""
        available = _compat.device_memory_bytes()
        if not available:
            return
        args = (x1, x2, params, split_static(kwargs1, "kwargs")[0],
                split_static(kwargs2, "kwargs")[0])
        cost_model = self._cost_model(config, args, jaxprs=(jaxpr1, jaxpr2))
        peak = cost_model.peak((structured.NAME,) * len(cost_model.leaf_sizes))
        if peak > available:
            raise PathMemoryError(
                f"method='structured' needs about {peak / 2**30:.3g} GiB for these inputs "
                f"(estimated), more than the {available / 2**30:.3g} GiB of "
                f"{jax.devices()[0].device_kind}; dense fallbacks of primitives without a rule "
                "are the usual cause (ntkc.plan lists them as 'dense' rows). Pass memory_limit= "
                "to compute the kernel in blocks that fit, or use method='auto' or 'jacobian'")

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
        key = (signature((x1, x2, params, dyn1, dyn2)), static1, static2, read_rng)
        config = self._configs.get(key)
        if config is None:
            try:
                config = self._resolve(x1, x2, params, kwargs1, kwargs2, static1, static2)
            except _split.NoFit as err:
                config = self._split_config(err, x1, x2, params, kwargs)
            config = self._configs[key] = dataclasses.replace(config, read_rng=read_rng)
        return config, (x1, x2, params, dyn1, dyn2)

    def _split_config(self, err, x1, x2, params, kwargs) -> Config:
        """Blocks of examples that fit ``memory_limit``, else chunks of outputs (whose calls may
        split their examples in turn)."""
        try:
            return self._block_config(err, x1, x2, params, kwargs)
        except PathMemoryError as no_blocks:
            config = self._chunk_config(err, x1, x2, params, kwargs)
            if config is None:
                if not self._split_outputs:
                    raise
                raise PathMemoryError(f"{no_blocks}, nor for one output at a time") from None
            return config

    def _chunk_config(self, err, x1, x2, params, kwargs) -> Config | None:
        """The largest chunk of outputs (an equal divisor of the largest output axis that is
        not the batch axis) whose kernel fits ``memory_limit``; None when there is none."""
        config = err.config
        if not self._split_outputs or len(config.axes) != 1 or _split.sided_kwargs(kwargs):
            return None
        axes = config.axes[0]
        batch = config.batching.outputs[0] if config.batching is not None else None
        candidates = [a for a in range(axes.ndim) if a != batch and axes.shape1[a] > 1
                      and axes.shape1[a] == axes.shape2[a]]
        if not candidates:
            return None
        axis = max(candidates, key=lambda a: axes.shape1[a])
        n = axes.shape1[axis]
        for size in (d for d in range(n // 2, 0, -1) if n % d == 0):
            inner = self._chunk_fn(axis, size)
            try:  # two different chunks: the costlier case
                inner.prepare((x1, _split.output_start(0)),
                              (x1 if x2 is None else x2, _split.output_start(size)),
                              params, **kwargs)
            except PathMemoryError:
                continue
            return dataclasses.replace(config, method="outputs", chunk=(axis, size))
        return None

    def _chunk_fn(self, axis: int, size: int) -> "KernelFunction":
        """The kernel function of ``f`` restricted to ``size`` outputs along ``axis``
        (``_split.output_chunk``)."""
        if (axis, size) not in self._chunk_fns:
            self._chunk_fns[axis, size] = KernelFunction(
                _split.output_chunk(self.f, axis, size), self.trace_axes, self.diagonal_axes,
                _split.chunk_vmap_axes(self.vmap_axes), self.method, self.strict,
                self.memory_limit, self.by_param, _split_outputs=False)
        return self._chunk_fns[axis, size]

    def _chunk_sides(self, axis: int, size: int) -> "_split.FactoredChunks":
        """The chunks' sides, each computed once per row of chunks (``_split.FactoredChunks``)."""
        if (axis, size) not in self._chunk_sides_by_size:
            self._chunk_sides_by_size[axis, size] = _split.FactoredChunks(
                self._chunk_fn(axis, size), finish)
        return self._chunk_sides_by_size[axis, size]

    def _block_config(self, err, x1, x2, params, kwargs) -> Config:
        """The largest block of examples (halving) for which a method fits ``memory_limit``."""
        _split.check_splittable(err.config, kwargs, err.why, self.memory_limit)
        batching = err.config.batching
        size = max(batching.size1, batching.size2)
        while size > 1:
            size = (size + 1) // 2
            xa, kwa = _slicing.take((x1, kwargs), batching.inputs, 0, size)
            # x2 = x1 still pairs different blocks: check the costlier case of distinct inputs
            xb = _slicing.take((x1 if x2 is None else x2, kwargs), batching.inputs, 0, size)[0]
            xb, kw1, kw2, _ = self._parse(xa, xb, kwa)
            try:
                self._resolve(xa, xb, params, kw1, kw2, split_static(kw1, "kwargs")[1],
                              split_static(kw2, "kwargs")[1])
            except _split.NoFit:
                continue
            return dataclasses.replace(err.config, method="blocks", block=size)
        raise PathMemoryError(f"memory_limit={self.memory_limit}: {err.why}, and not even for "
                              "one example at a time")

    def _jit(self, config: Config, args) -> Callable:
        """``_compute`` under ``jax.jit``, with ``config.compiler_options`` when it is the
        top-level jit (JAX refuses options on a nested one: then XLA's defaults apply)."""
        options = () if _compat.is_traced(args) else config.compiler_options
        jitted = self._jit_by_options.get(options)
        if jitted is None:
            jitted = self._jit_by_options[options] = jax.jit(
                functools.partial(_compute, self.f), static_argnames=("config",),
                compiler_options=_compat.jit_options(options))
        return jitted

    def compiler_options(self, x1, x2, params, **kwargs) -> dict:
        """The XLA compiler options this kernel function compiles its program with, for these
        arguments (on CPU: XLA's own convolution kernels when f has convolutions; usually {}).

        They apply when ntkc's ``jax.jit`` is the outermost one. To keep them with the kernel
        inside a function of your own, jit that one with them::

            step = jax.jit(step, compiler_options=kernel_fn.compiler_options(x, None, params))
        """
        return dict(self.prepare(x1, x2, params, **kwargs)[0].compiler_options)

    def _structured_records(self, config: Config, args, warn: bool = True) -> list | None:
        """The structured plan's records for ``args`` (None: it cannot be planned).

        Traced through the kernel's own ``jax.jit`` with the structured config, so that when ``auto``
        resolves to ``structured`` the kernel's own call finds that trace in jit's cache
        instead of tracing the whole structured program a second time.
        """
        planned = dataclasses.replace(config, method=structured.NAME, leaf_methods=None,
                                      block=None, read_rng=None)
        key = (signature(args), planned)
        if key not in self._records:
            jitted = self._jit(planned, args)
            # jit's own trace (of tracers: an abstract evaluation), which its call then reuses
            run = ((lambda c: jax.eval_shape(functools.partial(jitted, config=c), *args))
                   if _compat.is_traced(args) else (lambda c: jitted.trace(*args, config=c)))
            records = _auto.record_structured(run, planned, warn)
            if records is not None and not records:  # jit had the trace cached: trace again
                records = _auto.record_structured(
                    lambda c: jax.eval_shape(functools.partial(_compute, self.f, config=c), *args),
                    planned, warn)
            self._records[key] = records
        return self._records[key]

    def _cost_model(self, config: Config, args, warn: bool = True, jaxprs=(None, None)):
        """The estimates' inputs (``ntkc.passes.assign.CostModel``) for ``args`` under
        ``config`` (``jaxprs``: f's jaxprs for x1 and x2, when the caller traced them already)."""
        x1, x2, params, dyn1, dyn2 = args
        return _auto.cost_model(self.f, config, params, x1, x1 if x2 is None else x2,
                                merge_kwargs(config.static_kwargs1, dyn1),
                                merge_kwargs(config.static_kwargs2, dyn2),
                                self._structured_records(config, args, warn), jaxprs)


    def __call__(self, x1, x2, params, **kwargs):
        config, args = self.prepare(x1, x2, params, **kwargs)
        if config.block:
            return self._blockwise(config, x1, x2, params, kwargs)
        if config.chunk:
            return _split.chunkwise(config, self._chunk_fn(*config.chunk), x1, x2, params, kwargs,
                                    self._chunk_sides(*config.chunk))
        return self._jit(config, args)(*args, config=config)

    def _blockwise(self, config, x1, x2, params, kwargs):
        """The kernel from blocks of ``config.block`` examples, each a call that fits."""
        batching = config.batching
        rows = _split.blocks(batching.size1, config.block)
        cols = rows if x2 is None else _split.blocks(batching.size2, config.block)
        every_pair = any(batching.outputs[k] in a.free for k, a in enumerate(config.axes))
        grid = {}
        for i, (a0, a1) in enumerate(rows):
            xa, kwa = _slicing.take((x1, kwargs), batching.inputs, a0, a1)
            for j, (b0, b1) in enumerate(cols):
                if i != j and not every_pair:
                    continue
                if x2 is None and i == j:
                    grid[i, j] = self(xa, None, params, **kwa)
                    continue
                xb, kwb = _slicing.take((x1 if x2 is None else x2, kwargs), batching.inputs,
                                        b0, b1)
                grid[i, j] = self(xa, xb, params, **{k: (kwa[k], kwb[k]) for k in kwargs})
        return _split.assemble(config, grid, rows, cols)


def estimate_methods(f, x1, x2, params, **options) -> dict[str, float]:
    """The FLOP estimates ``method="auto"`` compares: each method alone, and ``"mixed"`` when
    a per-leaf mix is cheaper (for benchmarks and tools).

    ``options`` are :func:`ntk_fn`'s (``method`` ignored) plus ``kwargs`` for ``f``.
    """
    kwargs = dict(options.pop("kwargs", None) or {})
    options.pop("method", None)
    kfn = KernelFunction(f, method=jacobian.NAME, **options)
    config, args = kfn.prepare(x1, x2, params, **kwargs)
    return _auto.method_costs(kfn._cost_model(config, args, warn=False))


def plan(f: Callable, x1, x2, params, *, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None,
         method="auto", strict: bool = False, memory_limit: int | None = None,
         kwargs: dict | None = None) -> Plan:
    """The structured program for these inputs, before emission: a :class:`ntkc.ir.Plan`.

    Traces abstractly (no compilation). Arguments are those of :func:`ntk_fn` and of its kernel
    function; ``kwargs`` are ``f``'s keyword arguments. ``plan.method`` is the method the kernel
    function would use (``method="auto"`` resolved), ``plan.split`` how it divides a call that
    does not fit ``memory_limit`` (each part runs the plan); the terms are always the
    structured ones.

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
      >>> params = {"w": jnp.ones((3, 8)), "v": jnp.ones((8, 2))}
      >>> p = ntkc.plan(f, jnp.ones((4, 3)), None, params, vmap_axes=0)
      >>> [t.leaf for t in p.terms]
      ["['v']", "['w']"]
    """
    kwargs = check_mapping(kwargs)
    check_method(method)
    options = dict(trace_axes=trace_axes, diagonal_axes=diagonal_axes, vmap_axes=vmap_axes,
                   strict=strict)
    kfn = KernelFunction(f, method=method, memory_limit=memory_limit, **options)
    chosen = kfn.prepare(x1, x2, params, **kwargs)[0]
    chunks = None
    if chosen.chunk:  # the plan of one chunk of outputs: what each call of the split kernel runs
        axis, size = chosen.chunk
        chunks = (axis, size, chosen.axes[0].shape1[axis])
        kfn = kfn._chunk_fn(axis, size)
        f, options["vmap_axes"] = kfn.f, kfn.vmap_axes
        x1 = (x1, _split.output_start(0))
        x2 = None if x2 is None else (x2, _split.output_start(0))
        chosen = kfn.prepare(x1, x2, params, **kwargs)[0]
    blocks = None
    if chosen.block:  # the plan of one block: what each call of the split kernel runs
        axes, size = chosen.batching.inputs, chosen.block
        x2 = None if x2 is None else _slicing.take((x2, kwargs), axes, 0, size)[0]
        x1, kwargs = _slicing.take((x1, kwargs), axes, 0, size)
        chosen = kfn.prepare(x1, x2, params, **kwargs)[0]
        blocks = chosen.batching.size1
    config, args = KernelFunction(f, method=structured.NAME, _check_memory=False,
                                  **options).prepare(x1, x2, params, **kwargs)
    config = dataclasses.replace(config, memory_limit=memory_limit)
    records = kfn._structured_records(config, args, warn=False)
    if records is None:  # raise the structured method's own error
        records = _plan.record(
            lambda c: jax.eval_shape(functools.partial(_compute, f, config=c), *args), config)
    cost_model = kfn._cost_model(config, args)
    outputs = jax.tree_util.tree_unflatten(config.out_treedef, [0] * config.out_treedef.num_leaves)
    output_names = [jax.tree_util.keystr(p) or "output"
                    for p, _ in jax.tree_util.tree_flatten_with_path(outputs)[0]]
    leaf_names = [jax.tree_util.keystr(p) or "params"
                  for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    leaf_methods = chosen.leaf_methods or (chosen.method,) * len(leaf_names)
    fallbacks = _auto.dense_fallbacks(records, (cost_model.examples1, cost_model.examples2),
                                      config.x2_is_x1, cost_model.itemsize)
    split = Split(blocks, chunks) if blocks or chunks else None
    return _plan.build_plan(records, _auto.cotangent_cost(cost_model), chosen.method,
                            [a.kernel_shape for a in config.axes], output_names, leaf_names,
                            dict(zip(leaf_names, leaf_methods)), _auto.method_costs(cost_model),
                            fallbacks, split)


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
