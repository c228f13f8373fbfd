"""The intermediate representation of the structured-derivatives compiler.

A parameter leaf θ reaches the network through a :class:`Chain` of structure-only ops (transpose,
reshape, convert: bijections on entries) giving a value ``p``; each equation that consumes ``p``
is a :class:`Use`. A rule describes the use's Jacobian ``∂y/∂p`` by a :class:`Form`: an einsum
``y[out_labels] = Σ Π factors · p[param_labels]`` whose factors are compact (the layer input of a
dense layer, a mask) instead of the dense ``|y| x |p|`` matrix.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Hashable, Sequence

Label = Hashable


@dataclasses.dataclass(frozen=True)
class Chain:
    """Structure-only ops from a parameter leaf to the value a use consumes.

    Attributes:
      leaf: index of the parameter leaf.
      eqns: the chain's equations, in order (empty: the leaf itself).
    """

    leaf: int
    eqns: tuple = ()

    @property
    def signature(self) -> tuple:
        """Equal for chains that compute the same function of the leaf."""
        return (self.leaf,) + tuple(
            (e.primitive.name, tuple(sorted((k, repr(v)) for k, v in e.params.items())))
            for e in self.eqns
        )


@dataclasses.dataclass(frozen=True)
class Use:
    """One place where a parameter value enters the linear map.

    Attributes:
      eqn_index: index of the consuming equation, or None when ``p`` is itself an output.
      operand: position of ``p`` among the equation's operands (or among the outputs).
      chain: how ``p`` is computed from the parameter leaf.
      primitive: name of the consuming primitive (``"output"`` for an output).
    """

    eqn_index: int | None
    operand: int
    chain: Chain
    primitive: str


@dataclasses.dataclass(frozen=True)
class OneHot:
    """Marks a factor given by integer indices: ``onehot(ids, size)`` with the one-hot axis last.

    When both sides of a pair index the same parameter axis, the network contracts the pair to
    the token-equality matrix ``ids1 == ids2`` and the one-hot matrix is never built.
    """

    labels: tuple
    size: int


@dataclasses.dataclass(frozen=True)
class Form:
    """``y[out_labels] = Σ_(other labels) Π factors · p[param_labels]``: a use's ``∂y/∂p``.

    Labels are any hashables, local to the form. A label of ``out_labels`` that is also in
    ``param_labels`` is an identity (diagonal) structure; one only in ``out_labels`` and the
    factors is dense; one only in ``out_labels`` is a broadcast; one only in ``param_labels``
    is summed over (a reduction).

    Attributes:
      out_labels: one label per axis of ``y``.
      param_labels: one label per axis of ``p``.
      factors: ``(array, labels)`` pairs; ``labels`` may be a :class:`OneHot` for an index array.
      structure: a short human-readable summary, for plans and docs.
    """

    out_labels: tuple
    param_labels: tuple
    factors: tuple = ()
    structure: str = ""

    def __post_init__(self):
        object.__setattr__(self, "out_labels", tuple(self.out_labels))
        object.__setattr__(self, "param_labels", tuple(self.param_labels))
        object.__setattr__(
            self, "factors",
            tuple((a, l if isinstance(l, OneHot) else tuple(l)) for a, l in self.factors))

    @property
    def spec(self) -> tuple:
        """The static half: labels only."""
        return (self.out_labels, self.param_labels, tuple(l for _, l in self.factors), self.structure)

    @property
    def arrays(self) -> list:
        return [a for a, _ in self.factors]


def identity_form(ndim: int, structure: str = "identity") -> Form:
    labels = tuple(range(ndim))
    return Form(labels, labels, (), structure)


@dataclasses.dataclass(frozen=True)
class Term:
    """One contraction of the NTK: a pair of uses of one parameter leaf for one output leaf.

    Attributes:
      output: which output leaf (its pytree path).
      leaf: which parameter leaf (its pytree path).
      primitives: the primitives of the two uses (x1's, x2's).
      structure: the two rules' structure summaries.
      method: "structured" (the sides meet before the parameter axes are summed), "jacobian"
        (each side contracted to its per-leaf Jacobian first: the order the cost model chose),
        "dense" (a use fell back to the dense rule), or "ntvp" when the leaf's part is computed
        by NTK-vector products (or "jacobian" by the Jacobian method) in a per-leaf plan.
      einsum: the network in einsum notation.
      order: the chosen contraction path (opt_einsum's linear format).
      cost: the chosen order's cost, without the steps that repeat x1's on the same arrays when
        x2 is x1 (XLA computes them once); ``naive`` one step over every label.
    """

    output: str
    leaf: str
    primitives: tuple
    structure: tuple
    method: str
    einsum: str
    order: tuple
    cost: Any
    naive: Any


@dataclasses.dataclass(frozen=True)
class AnalysisRecord:
    """The analysis (trace -> inline -> uses) of one side of the structured program.

    Attributes:
      analysis: the ``ntkc.passes.uses.Analysis``.
      side: 1 or 2, the side it was made for (side 2 reuses side 1's when they agree).
      per_example: whether it was traced on one example (``vmap_axes``).
    """

    analysis: Any
    side: int
    per_example: bool
    kind = "analysis"


@dataclasses.dataclass(frozen=True)
class ContractionRecord:
    """One einsum of the structured program, with the contraction order chosen for it.

    Attributes:
      kind: ``"term"`` (a pair of uses: part of the kernel) or ``"gradient"`` (one side
        contracted to a per-leaf gradient first, where the two uses' chains differ).
      labels: each operand's labels (integers).
      output: the result's labels.
      sizes: every label's size.
      path: the chosen order and its cost (``ntkc.passes.path.PathInfo``).
      output_leaf, param_leaf, uses, outputs, sides, primitives, structure: for terms, which
        output leaf and parameter leaf, the pair of uses and of their outputs, the side of each
        operand (1, 2, or 0 for a pair's shared index operand), the uses' primitives and their
        rules' structure summaries; None for gradients.
    """

    kind: str
    labels: tuple
    output: tuple
    sizes: dict = dataclasses.field(compare=False)
    path: Any = None
    output_leaf: int | None = None
    param_leaf: int | None = None
    uses: tuple | None = None
    outputs: tuple | None = None
    sides: tuple | None = None
    primitives: tuple | None = None
    structure: tuple | None = None

    def matches(self, labels, output, sizes) -> bool:
        """Whether an einsum of these labels and sizes is the one this record planned."""
        return (tuple(map(tuple, labels)) == tuple(map(tuple, self.labels))
                and tuple(output) == tuple(self.output) and sizes == self.sizes)


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """The structured program for one input signature, planned before it runs: each side's
    analysis and every contraction's order, in the order the program performs them.

    Built by abstract evaluation (``ntkc.pipeline.schedule``), then executed inside ``jit``
    (``Config.schedule``): the execution reuses the analyses (``f`` is not traced again) and
    takes each einsum's order from here instead of choosing it again. Compared by identity.

    Attributes:
      records: :class:`AnalysisRecord` and :class:`ContractionRecord` values, in order.
    """

    records: tuple

    def analysis(self, side: int):
        """Side ``side``'s analysis (side 1's when side 2 reused it), or None."""
        found = {r.side: r.analysis for r in self.records if r.kind == "analysis"}
        return found.get(side, found.get(1))

    @property
    def contractions(self) -> tuple:
        return tuple(r for r in self.records if r.kind != "analysis")

    @property
    def terms(self) -> tuple:
        return tuple(r for r in self.records if r.kind == "term")

    @property
    def constants(self) -> list:
        """The arrays the analyses' jaxprs close over (f's closure, folded constants)."""
        return [c for r in self.records if r.kind == "analysis"
                for c in r.analysis.traced.jaxpr.consts]


@dataclasses.dataclass(frozen=True)
class Fallback:
    """A use of a parameter that takes the dense rule (its primitive has no structured rule, or
    the rule declined): ``∂y/∂θ`` built densely by forward mode.

    Attributes:
      leaf: the parameter leaf's index.
      primitive: the consuming primitive's name.
      where: the source line of f that created it ('' when unknown).
      side: 1 or 2, the side (x1's or x2's examples) it is computed for.
      flops: estimated FLOPs of building it for that side's examples.
      bytes: estimated working set of building it (its forward-mode temporaries).
    """

    leaf: int
    primitive: str
    where: str
    side: int
    flops: float
    bytes: float


@dataclasses.dataclass(frozen=True)
class Split:
    """How the kernel function divides a call whose working set does not fit ``memory_limit``;
    each part runs the plan.

    Attributes:
      examples: examples per block of each side, or None.
      outputs: ``(axis, size, total)``: chunks of ``size`` of the ``total`` outputs along output
        axis ``axis``, or None.
    """

    examples: int | None = None
    outputs: tuple[int, int, int] | None = None

    def __str__(self) -> str:
        parts = []
        if self.examples:
            parts.append(f"in blocks of {self.examples} examples")
        if self.outputs:
            axis, size, total = self.outputs
            parts.append(f"in chunks of {size} of the {total} outputs along output axis {axis}")
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What ``method="structured"`` will run for given inputs, before emission.

    Attributes:
      terms: one :class:`Term` per contraction.
      cotangents: estimated cost of the cotangent passes (∂f/∂y of every use, per output basis).
      method: the name of the registered method the kernel function uses for these inputs
        (``"auto"`` resolved; ``"mixed"`` for a per-leaf mix), whether or not it is split.
      kernel_shapes: shapes of the kernels, one per output leaf.
      records: the structured program's records (:class:`AnalysisRecord`,
        :class:`ContractionRecord`: labels, sizes, paths), for tools.
      leaf_methods: per parameter leaf (its pytree path), the method that computes its part:
        one method for all, or a per-leaf mix when ``method`` is ``"mixed"``.
      method_costs: the estimated FLOPs of each method alone (and of the mix) that
        ``method="auto"`` compared.
      fallbacks: every use that takes the dense rule (:class:`Fallback`), with its cost.
      split: how a call that does not fit ``memory_limit`` is divided (:class:`Split`), or
        None when it runs whole.
      kernel: ``kernel(x1, x2, params, **kwargs)``: runs what was planned (the kernel function's
        configuration and schedule for this signature) on arguments of the planned shapes.
    """

    terms: tuple
    cotangents: Any
    method: str
    kernel_shapes: tuple
    records: tuple = dataclasses.field(default=(), repr=False, compare=False)
    leaf_methods: dict = dataclasses.field(default_factory=dict, compare=False)
    method_costs: dict = dataclasses.field(default_factory=dict, compare=False)
    fallbacks: tuple = ()
    split: Split | None = None
    kernel: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def cost(self):
        """Total estimated cost: cotangent passes plus every term."""
        total = self.cotangents
        for t in self.terms:
            total = total + t.cost
        return total

    @property
    def graph(self):
        """The rewritten graph as a ``networkx.DiGraph`` (see ``ntkc._plan.plan_graph``)."""
        from ntkc._plan import plan_graph

        return plan_graph(self)

    def to_dot(self) -> str:
        """Graphviz text of :attr:`graph`."""
        from ntkc._plan import to_dot

        return to_dot(self.graph)

    def __repr__(self) -> str:
        from ntkc._plan import format_plan

        return format_plan(self)
