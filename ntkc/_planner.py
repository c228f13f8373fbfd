"""Planning: per input signature of a kernel function, the checked and resolved ``Config``
that its call executes.

Everything here runs outside ``jit``, on shapes: the argument checks, ``method="auto"``'s choice
(``ntkc._auto``), the splits that fit ``memory_limit`` (``ntkc._split``), and for the structured
method its schedule (``ntkc.pipeline.schedule``: each side's analysis and every contraction
order), planned by abstract evaluation. Nothing is compiled.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax

from ntkc import _auto, _compat, _slicing, _split, pipeline
from ntkc._args import (check_example_outputs, check_independent_examples, check_inputs,
                        check_params, kernel_dtype, output_shapes, per_leaf_methods,
                        resolve_batching, signature, split_kwargs)
from ntkc._axes import make_kernel_axes
from ntkc._execute import compute
from ntkc._problem import Config, merge_kwargs, split_static
from ntkc.passes.path import PathMemoryError
from ntkc.methods import registry, structured


class Planner:
    """Plans the calls of one kernel function (``f`` and :func:`ntkc.ntk_fn`'s options):
    :meth:`configure` gives, per input signature, the ``Config`` its call executes, cached.

    ``split_outputs=False`` for the planner of one chunk of outputs; ``schedules=False`` where
    only the configuration is wanted (no schedule, no device-memory check).
    """

    def __init__(self, f, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None, method="auto",
                 strict=False, memory_limit=None, by_param=False, split_outputs=True,
                 schedules=True):
        self.f = f
        self.trace_axes, self.diagonal_axes, self.vmap_axes = trace_axes, diagonal_axes, vmap_axes
        self.method, self.strict, self.memory_limit = method, strict, memory_limit
        self.by_param = bool(by_param)
        self.split_outputs, self.schedules = split_outputs, schedules
        self._configs: dict[Any, Config] = {}
        self._schedules: dict[Any, Any] = {}  # (signature, config) -> ntkc.ir.Schedule or None
        self._chunks: dict[tuple[int, int], Planner] = {}

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
        if method == structured.NAME and self.memory_limit is None and self.schedules:
            self._check_device_memory(config, x1, x2, params, kwargs1, kwargs2, jaxpr1, jaxpr2)
        if method == registry.AUTO or self.memory_limit is not None:
            args = (x1, x2, params, split_static(kwargs1, "kwargs")[0],
                    split_static(kwargs2, "kwargs")[0])
            cost_model = self.cost_model(config, args, jaxprs=(jaxpr1, jaxpr2))
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
        cost_model = self.cost_model(config, args, jaxprs=(jaxpr1, jaxpr2))
        peak = cost_model.peak((structured.NAME,) * len(cost_model.leaf_sizes))
        if peak > available:
            raise PathMemoryError(
                f"method='structured' needs about {peak / 2**30:.3g} GiB for these inputs "
                f"(estimated), more than the {available / 2**30:.3g} GiB of "
                f"{jax.devices()[0].device_kind}; dense fallbacks of primitives without a rule "
                "are the usual cause (ntkc.plan lists them as 'dense' rows). Pass memory_limit= "
                "to compute the kernel in blocks that fit, or use method='auto' or 'jacobian'")

    @staticmethod
    def parse(x1, x2, kwargs):
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

    def configure(self, x1, x2, params, **kwargs):
        """Checks the arguments; returns ``(config, args)`` such that
        ``ntkc._execute.compute(f, *args, config=config)`` is the kernel (``config.block`` /
        ``config.chunk``: computed in blocks of examples / chunks of outputs, each part a call
        planned in turn)."""
        x2, kwargs1, kwargs2, read_rng = self.parse(x1, x2, kwargs)
        dyn1, static1 = split_static(kwargs1, "kwargs")
        dyn2, static2 = split_static(kwargs2, "kwargs")
        key = (signature((x1, x2, params, dyn1, dyn2)), static1, static2, read_rng)
        config = self._configs.get(key)
        if config is None:
            try:
                config = self._resolve(x1, x2, params, kwargs1, kwargs2, static1, static2)
            except _split.NoFit as err:
                config = self._split_config(err, x1, x2, params, kwargs)
            if config.method == structured.NAME and self.schedules:
                # the program the call runs, planned here; planning errors are the method's own
                config = dataclasses.replace(config, schedule=self.schedule(
                    config, (x1, x2, params, dyn1, dyn2), raise_errors=True))
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
                if not self.split_outputs:
                    raise
                raise PathMemoryError(f"{no_blocks}, nor for one output at a time") from None
            return config

    def _chunk_config(self, err, x1, x2, params, kwargs) -> Config | None:
        """The largest chunk of outputs (an equal divisor of the largest output axis that is
        not the batch axis) whose kernel fits ``memory_limit``; None when there is none."""
        config = err.config
        if not self.split_outputs or len(config.axes) != 1 or _split.sided_kwargs(kwargs):
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
            inner = self.chunk(axis, size)
            try:  # two different chunks: the costlier case
                inner.configure((x1, _split.output_start(0)),
                              (x1 if x2 is None else x2, _split.output_start(size)),
                              params, **kwargs)
            except PathMemoryError:
                continue
            return dataclasses.replace(config, method="outputs", chunk=(axis, size))
        return None

    def chunk(self, axis: int, size: int) -> "Planner":
        """The planner of ``f`` restricted to ``size`` outputs along ``axis``
        (``_split.output_chunk``)."""
        if (axis, size) not in self._chunks:
            self._chunks[axis, size] = Planner(
                _split.output_chunk(self.f, axis, size), self.trace_axes, self.diagonal_axes,
                _split.chunk_vmap_axes(self.vmap_axes), self.method, self.strict,
                self.memory_limit, self.by_param, split_outputs=False)
        return self._chunks[axis, size]

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
            xb, kw1, kw2, _ = self.parse(xa, xb, kwa)
            try:
                self._resolve(xa, xb, params, kw1, kw2, split_static(kw1, "kwargs")[1],
                              split_static(kw2, "kwargs")[1])
            except _split.NoFit:
                continue
            return dataclasses.replace(err.config, method="blocks", block=size)
        raise PathMemoryError(f"memory_limit={self.memory_limit}: {err.why}, and not even for "
                              "one example at a time")

    def schedule(self, config: Config, args, warn: bool = True, raise_errors: bool = False):
        """The structured program planned for ``args`` (``ntkc.ir.Schedule``), cached per input
        signature; None when it cannot be planned (with ``raise_errors``, the planning error).

        Planned by abstract evaluation (``jax.eval_shape``: no compilation); the kernel's own
        call executes it (``Config.schedule``), so ``f`` is traced once for the analysis
        whether ``auto``, ``ntkc.plan`` or the call asked first.
        """
        planned = dataclasses.replace(config, method=structured.NAME, leaf_methods=None,
                                      block=None, chunk=None, read_rng=None, schedule=None)
        key = (signature(args), planned)
        trace = lambda c: jax.eval_shape(functools.partial(compute, self.f, config=c), *args)
        if key not in self._schedules:
            if raise_errors:
                found = pipeline.schedule(trace, planned)
            else:  # auto may do without it; say why only when auto is choosing
                found = _auto.schedule_structured(trace, planned,
                                                  warn and config.method == registry.AUTO)
            if found is not None and _compat.is_traced(found.constants):
                return found  # f closes over the values of the caller's trace: not reusable
            self._schedules[key] = found
        if self._schedules[key] is None and raise_errors:
            pipeline.schedule(trace, planned)  # raises the structured method's own error
        return self._schedules[key]

    def cost_model(self, config: Config, args, warn: bool = True, jaxprs=(None, None)):
        """The estimates' inputs (``ntkc.passes.assign.CostModel``) for ``args`` under
        ``config`` (``jaxprs``: f's jaxprs for x1 and x2, when the caller traced them already)."""
        x1, x2, params, dyn1, dyn2 = args
        return _auto.cost_model(self.f, config, params, x1, x1 if x2 is None else x2,
                                merge_kwargs(config.static_kwargs1, dyn1),
                                merge_kwargs(config.static_kwargs2, dyn2),
                                self.schedule(config, args, warn), jaxprs)
