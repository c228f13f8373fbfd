"""The methods that compute an NTK, registered by name, as the path optimisers are
(``ntkc.passes.path.OPTIMIZERS``).

A method is one module of ``ntkc/methods/`` that builds a :class:`Method` and registers it;
``ntkc/methods/__init__.py`` imports the modules, which fills :data:`METHODS` at import, in the
order ``method="auto"`` tries them. Everything that needs the list of methods (argument checks,
the planner, ``ntkc.gram``, the command line) reads it from here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

# Not a method: the planner's choice among them, per parameter leaf.
AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class GramSides:
    """How ``ntkc.gram`` reuses a method's per-example work: each block of examples' side is
    computed once and paired with many others, tile by tile.

    Attributes:
      side: ``side(prob) -> (arrays, static)``: the per-example work on ``prob``'s x1 (one
        block), as a list of arrays with a leading example axis, and a static part that is the
        same for every block of one shape.
      pair: ``pair(config, static, arrays1, arrays2, hoist) -> list``: the kernel per output
        leaf of two sides' arrays; ``hoist`` is a ``ntkc.passes.hoist.Hoist`` or None.
      hoists: whether a side's local contraction steps may be computed in its side program
        (``ntkc.passes.hoist``); only then is ``pair`` given a ``hoist``.
    """

    side: Callable[[Any], tuple[list, Any]]
    pair: Callable[..., list]
    hoists: bool = False


@dataclasses.dataclass(frozen=True)
class Method:
    """One way to compute the NTK.

    Attributes:
      name: what ``method=`` calls it.
      kernel: ``kernel(prob: ntkc._problem.Problem) -> list``: the kernel per output leaf (with
        ``by_param``, per output leaf the list of each parameter leaf's part), traced under jit.
      flops: ``flops(cost_model, leaves) -> float``: the estimated FLOPs of computing the part
        of the kernel of the parameter leaves ``leaves`` (indices), from the shapes and FLOPs
        in ``cost_model`` (``ntkc.passes.assign.CostModel``).
      working_set: ``working_set(cost_model, leaves) -> float``: the estimated bytes its program
        holds at once besides its arguments and the kernel (``CostModel.fixed_bytes``).
      gram: its side and pair functions for Gram matrices, or None when it has no per-example
        work to reuse (``ntkc.gram`` then calls the kernel function per tile).
      per_leaf: whether it computes any group of parameter leaves: a name ``method=`` accepts
        (alone or per leaf), and a candidate of ``method="auto"``. False for the per-leaf mix,
        which composes the others (its estimates are theirs summed: ``CostModel.cost``).
      reverses_every_loop: it needs reverse mode through every while loop whose carry depends
        on the parameters (``ntkc.passes.capability`` finds them).
      needs_plan: its estimates come from the structured plan, so it is out when that cannot
        be planned (no contraction order fits ``memory_limit``, or the analysis failed).
    """

    name: str
    kernel: Callable[[Any], list]
    flops: Callable[[Any, Sequence[int]], float] | None = None
    working_set: Callable[[Any, Sequence[int]], float] | None = None
    gram: GramSides | None = None
    per_leaf: bool = True
    reverses_every_loop: bool = False
    needs_plan: bool = False

    def can_run(self, cost_model) -> bool:
        """Whether ``method="auto"`` may choose it for the call ``cost_model`` describes."""
        if self.needs_plan and cost_model.terms is None:
            return False
        return self.name not in cost_model.unavailable


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds ``method`` to :data:`METHODS` under its name; returns it."""
    if method.name == AUTO:
        raise ValueError(f"{AUTO!r} names the planner's choice among methods, not a method")
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    if method.per_leaf and (method.flops is None or method.working_set is None):
        raise ValueError(f"method {method.name!r}: a per-leaf method needs its flops and "
                         "working_set estimates (method='auto' compares them)")
    METHODS[method.name] = method
    return method


def per_leaf_methods() -> tuple[Method, ...]:
    """The methods that compute any group of parameter leaves, in registration order."""
    return tuple(m for m in METHODS.values() if m.per_leaf)


def per_leaf_names() -> tuple[str, ...]:
    """Their names: what a pytree of methods (one per parameter leaf) may hold."""
    return tuple(m.name for m in per_leaf_methods())


def names() -> tuple[str, ...]:
    """The names ``method=`` accepts: ``"auto"`` and every per-leaf method."""
    return (AUTO,) + per_leaf_names()


def check_name(name: str) -> str:
    """``name`` if ``method=`` accepts it; else a ``ValueError`` that lists :func:`names`."""
    if name not in names():
        raise ValueError(f"method={name!r} is not one of {', '.join(map(repr, names()))}")
    return name


def get(name: str) -> Method:
    """The method registered as ``name``."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"no method {name!r} is registered; registered: "
                         f"{', '.join(map(repr, METHODS))}") from None
