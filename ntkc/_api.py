"""The public entry points: ``ntk_fn``, ``plan`` and the neural-tangents-compatible
``empirical_ntk_fn``.

A kernel function asks its planner (``ntkc._planner``) for the plan of a call, once per input
signature, outside ``jit``, and executes it (``ntkc._execute``) as one jitted program per
signature, cached.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Callable

import jax

from ntkc import _auto, _compat, _plan, _slicing, _split
from ntkc._args import check_bytes, check_mapping, check_method, signature
from ntkc._execute import compute, finish
from ntkc._planner import Planner
from ntkc._problem import Config
from ntkc.ir import Plan, Split
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
      memory_limit: bytes the program may take as XLA's memory analysis counts them
        (estimated from shapes: its arguments and kernel, plus the per-example Jacobians, the
        VJPs and batched JVPs, or the structured operands and largest step; 1-2x XLA's count:
        bench/estimates.py). The planner picks contraction orders whose every step fits, a
        method that fits (``"auto"``), or else computes the kernel in blocks of examples that
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

    Asks its planner (``ntkc._planner.Planner``) for the plan of each input signature, once,
    outside ``jit``, and runs it as one jitted program per signature (a split plan: its parts).
    """

    def __init__(self, f, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None, method="auto",
                 strict=False, memory_limit=None, by_param=False, _planner=None):
        if _planner is None:  # else: the kernel function of a planner's chunk of outputs
            check_method(method)
            if not callable(f):
                raise TypeError(f"f must be callable, got {f!r}")
            check_bytes(memory_limit, "memory_limit")
            _planner = Planner(f, trace_axes, diagonal_axes, vmap_axes, method, strict,
                               memory_limit, by_param)
        self.planner = _planner
        self.f, self.method = _planner.f, _planner.method
        self.trace_axes, self.diagonal_axes = _planner.trace_axes, _planner.diagonal_axes
        self.vmap_axes, self.strict = _planner.vmap_axes, _planner.strict
        self.memory_limit, self.by_param = _planner.memory_limit, _planner.by_param
        self._jit_by_options: dict[tuple, Callable] = {}
        self._chunk_fns: dict[tuple[int, int], KernelFunction] = {}
        self._chunk_sides_by_size: dict[tuple[int, int], _split.FactoredChunks] = {}
        name = getattr(self.f, "__name__", self.f)
        self.__doc__ = f"Empirical NTK of {name!s} (method={self.method!r})."

    def prepare(self, x1, x2, params, **kwargs):
        """Checks the arguments and plans the call (``ntkc._planner.Planner.configure``):
        ``(config, args)``, cached per input signature."""
        return self.planner.configure(x1, x2, params, **kwargs)

    def _cost_model(self, config: Config, args, warn: bool = True, jaxprs=(None, None)):
        """The planner's estimates' inputs (``Planner.cost_model``), for tools and benchmarks."""
        return self.planner.cost_model(config, args, warn, jaxprs)

    def _chunk_fn(self, axis: int, size: int) -> "KernelFunction":
        """The kernel function of ``f`` restricted to ``size`` outputs along ``axis``
        (``_split.output_chunk``), planned by this one's planner of that chunk."""
        if (axis, size) not in self._chunk_fns:
            self._chunk_fns[axis, size] = KernelFunction(
                None, _planner=self.planner.chunk(axis, size))
        return self._chunk_fns[axis, size]

    def _chunk_sides(self, axis: int, size: int) -> "_split.FactoredChunks":
        """The chunks' sides, each computed once per row of chunks (``_split.FactoredChunks``)."""
        if (axis, size) not in self._chunk_sides_by_size:
            self._chunk_sides_by_size[axis, size] = _split.FactoredChunks(
                self._chunk_fn(axis, size), finish)
        return self._chunk_sides_by_size[axis, size]

    def _jit(self, config: Config, args) -> Callable:
        """``ntkc._execute.compute`` under ``jax.jit``, with ``config.compiler_options`` when it
        is the top-level jit (JAX refuses options on a nested one: then XLA's defaults apply)."""
        options = () if _compat.is_traced(args) else config.compiler_options
        jitted = self._jit_by_options.get(options)
        if jitted is None:
            jitted = self._jit_by_options[options] = jax.jit(
                functools.partial(compute, self.f), static_argnames=("config",),
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
    return _auto.method_costs(kfn.planner.cost_model(config, args, warn=False))


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
    kfn = top = KernelFunction(f, method=method, memory_limit=memory_limit, **options)
    chosen = kfn.prepare(x1, x2, params, **kwargs)[0]
    run = functools.partial(_run_plan, top, signature((x1, x2, params, kwargs)))
    chunks = None
    if chosen.chunk:  # the plan of one chunk of outputs: what each call of the split kernel runs
        axis, size = chosen.chunk
        chunks = (axis, size, chosen.axes[0].shape1[axis])
        kfn = kfn._chunk_fn(axis, size)
        f, options["vmap_axes"] = kfn.f, kfn.vmap_axes
        if axis in chosen.axes[0].free:  # most calls pair two different chunks
            x1, x2 = ((x1, _split.output_start(0)),
                      (x1 if x2 is None else x2, _split.output_start(size)))
        else:  # traced or diagonal: each chunk with itself
            x1, x2 = (x1, _split.output_start(0)), (None if x2 is None
                                                     else (x2, _split.output_start(0)))
        chosen = kfn.prepare(x1, x2, params, **kwargs)[0]
    blocks = None
    if chosen.block:  # the plan of one block: what each call of the split kernel runs
        axes, size = chosen.batching.inputs, chosen.block
        x2 = None if x2 is None else _slicing.take((x2, kwargs), axes, 0, size)[0]
        x1, kwargs = _slicing.take((x1, kwargs), axes, 0, size)
        chosen = kfn.prepare(x1, x2, params, **kwargs)[0]
        blocks = chosen.batching.size1
    config, args = Planner(f, method=structured.NAME, schedules=False,
                           **options).configure(x1, x2, params, **kwargs)
    config = dataclasses.replace(config, memory_limit=memory_limit)
    # the schedule the kernel function executes when it runs the structured method (the same
    # object: cached per signature), else the structured program it would run
    schedule = kfn.planner.schedule(config, args, warn=False, raise_errors=True)
    records = schedule.records
    cost_model = kfn.planner.cost_model(config, args)
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
                            fallbacks, split, run)


def _run_plan(kfn: KernelFunction, planned, x1, x2, params, **kwargs):
    """``Plan.kernel``: the planned kernel function, on arguments of the planned signature."""
    given = signature((x1, x2, params, kwargs))
    if given != planned:
        raise ValueError("Plan.kernel: the arguments' shapes, dtypes or structure differ from "
                         f"those the plan was made for:\n  planned {planned}\n  given   {given}")
    return kfn(x1, x2, params, **kwargs)


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
