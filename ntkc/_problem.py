"""One NTK request, checked: the function, the two inputs, the per-leaf axes and the batching.

Everything a method needs to compute a kernel lives here, so that the methods only differ in how
they contract. ``Config`` is the static, hashable half (resolved once per input signature, outside
``jit``); ``Problem`` adds the arrays (inside ``jit``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ntkc import _compat
from ntkc._axes import KernelAxes
from ntkc._leaves import replace_leaves


@dataclasses.dataclass(frozen=True)
class Batching:
    """``vmap_axes`` resolved against the inputs: examples do not interact along these axes.

    Attributes:
      inputs: per flattened ``(x, kwargs)`` leaf, the batch axis or None.
      outputs: per output leaf, its non-negative batch axis.
      size1: number of examples in ``x1``.
      size2: number of examples in ``x2``.
    """

    inputs: tuple[int | None, ...]
    outputs: tuple[int, ...]
    size1: int
    size2: int


@dataclasses.dataclass(frozen=True)
class Config:
    """The static part of a kernel call: hashable, used as a ``jit`` static argument."""

    method: str
    axes: tuple[KernelAxes, ...]
    out_treedef: Any
    batching: Batching | None
    x2_is_x1: bool
    static_kwargs1: Any  # (treedef, tuple of (position, value)) of non-array kwargs
    static_kwargs2: Any
    strict: bool = False
    memory_limit: int | None = None
    by_param: bool = False  # per parameter leaf kernels, a pytree shaped like params
    read_rng: str | None = None  # "key" or "pair": derive x2's key (see _api.read_keys)
    leaf_methods: tuple[str, ...] | None = None  # method "mixed": the method of each params leaf
    block: int | None = None  # method "blocks": examples per block under memory_limit
    chunk: tuple[int, int] | None = None  # method "outputs": (output axis, outputs per chunk)
    compiler_options: tuple = ()  # XLA options of the kernel's programs (_compat.compiler_options)
    dtypes: tuple = ()  # per output leaf, the kernel's dtype (_args.kernel_dtype), whatever the method
    # When a list, the structured program appends its analyses and contractions to it while it is
    # planned (ntkc.pipeline.schedule, an abstract evaluation). Not compared nor hashed.
    records: list | None = dataclasses.field(default=None, compare=False, repr=False)
    # The structured program planned for this signature (ntkc.pipeline.schedule), which the
    # kernel executes; compared by identity (one per cached configuration).
    schedule: Any = dataclasses.field(default=None, repr=False)

    @property
    def jit_options(self) -> dict | None:
        """``compiler_options`` as ``jax.jit`` takes them."""
        return _compat.jit_options(self.compiler_options)


def merge_kwargs(static, dynamic_leaves):
    """Rebuilds a kwargs dict from its array leaves and its static (non-array) leaves."""
    treedef, static_items = static
    leaves = list(dynamic_leaves)
    for pos, value in static_items:
        leaves.insert(pos, value)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def split_static(kwargs: dict, name: str):
    """Splits kwargs into array leaves (traced by jit) and hashable static leaves."""
    leaves, treedef = jax.tree_util.tree_flatten(kwargs)
    dynamic, static = [], []
    for pos, leaf in enumerate(leaves):
        if isinstance(leaf, (jax.Array, jnp.ndarray)) or hasattr(leaf, "__array__"):
            dynamic.append(leaf)
        else:
            try:
                hash(leaf)
            except TypeError:
                raise TypeError(
                    f"{name}: keyword argument leaf {leaf!r} is neither an array nor hashable"
                ) from None
            static.append((pos, leaf))
    return dynamic, (treedef, tuple(static))


@dataclasses.dataclass
class Problem:
    """A checked NTK request with its arrays; built inside ``jit``."""

    f: Callable
    x1: Any
    x2: Any
    params: Any
    kwargs1: dict
    kwargs2: dict
    config: Config

    @property
    def axes(self) -> tuple[KernelAxes, ...]:
        return self.config.axes

    @property
    def batching(self) -> Batching | None:
        return self.config.batching

    @property
    def same_inputs(self) -> bool:
        return self.config.x2_is_x1

    def full_fn(self, side: int) -> Callable:
        """``params -> flat list of output leaves`` on the whole batch of ``x1`` or ``x2``."""
        x, kw = (self.x1, self.kwargs1) if side == 1 else (self.x2, self.kwargs2)

        def fn(params):
            return jax.tree_util.tree_leaves(self.f(params, x, **kw))

        return fn

    def input_leaves(self, side: int):
        """The flattened ``(x, kwargs)`` of one side: ``(leaves, treedef)``."""
        x, kw = (self.x1, self.kwargs1) if side == 1 else (self.x2, self.kwargs2)
        return jax.tree_util.tree_flatten((x, kw))

    def side_fn(self, side: int):
        """``(fn, arrays, axes)``: ``fn(params, arrays) -> f's output leaves`` on one side, with
        every array leaf of ``(x, kwargs)`` an argument (the other leaves closed over), so that
        one trace of ``fn`` holds for both sides. Under ``vmap_axes`` ``fn`` is per example: a
        batched array comes without its batch axis (``f`` sees a batch of one, as in
        neural-tangents) and the outputs lose theirs; ``axes`` gives each array's batch axis or
        None (None as a whole without ``vmap_axes``)."""
        leaves, treedef = self.input_leaves(side)
        index = [i for i, l in enumerate(leaves) if _is_array(l)]
        batching = self.batching
        axes = None if batching is None else [batching.inputs[i] for i in index]

        def fn(params, arrays):
            if axes is not None:
                arrays = [a if ax is None else jnp.expand_dims(a, ax)
                          for a, ax in zip(arrays, axes)]
            x, kw = jax.tree_util.tree_unflatten(treedef, replace_leaves(leaves, index, arrays))
            outs = jax.tree_util.tree_leaves(self.f(params, x, **kw))
            if batching is None:
                return outs
            return [jnp.squeeze(o, ax) for o, ax in zip(outs, batching.outputs)]

        return fn, [jnp.asarray(leaves[i]) for i in index], axes

    def same_closure(self) -> bool:
        """Whether the two sides close over the same non-array leaves (static keyword
        arguments), so that one side's trace of :meth:`side_fn` holds for the other."""
        statics = [[l for l in self.input_leaves(s)[0] if not _is_array(l)] for s in (1, 2)]
        try:
            return bool(statics[0] == statics[1])
        except Exception:  # leaves whose equality is not a bool
            return False

    def batched_inputs(self, side: int) -> tuple[list, list[int]]:
        """The batched array leaves of ``(x, kwargs)`` of one side and their batch axes."""
        _, arrays, axes = self.side_fn(side)
        return [a for a, ax in zip(arrays, axes) if ax is not None], [ax for ax in axes if ax is not None]

    def example_fn(self, side: int) -> Callable:
        """``(params, batched leaves of one example) -> flat output leaves`` without batch axes
        (:meth:`side_fn` with the unbatched arrays closed over)."""
        fn, arrays, axes = self.side_fn(side)
        batched_positions = [k for k, ax in enumerate(axes) if ax is not None]

        def example(params, batched):
            return fn(params, replace_leaves(arrays, batched_positions, batched))

        return example


def _is_array(leaf) -> bool:
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")
