"""Per-leaf method choice: which registered method (``ntkc.methods``) computes each parameter
leaf's part of the kernel.

The NTK is a sum over parameter leaves, so every leaf may take its own method. A method's cost on
a group G of leaves (FLOPs, from shapes alone) has a shared part, the passes through the part of
the linear map that G's tangents reach (a leaf near the output reaches few equations), and a part
per leaf (the structured terms, the Jacobian contraction). Each group runs as its own program, so
each pays its own passes: mixing pays only when it saves more than that.

With ``R(G)`` the linear map's FLOPs that G reaches for one example, ``U(G)`` those of G's use
equations (the weight-gradient products), ``s`` an output's size over the whole batch
(``N·O``), ``K`` its kernel's entries times the traced size, ``P(G)`` G's parameter count:

=========== ==============================================================================
jacobian    s₁·R + s₂·R (one reverse pass per output entry and side) + 2·K·P(G)
ntvp        s₂·R + N₁·s₂·R (a VJP per entry of f(x2), a JVP per such entry and x1 example;
            N₁·s₂ → s₂ when the example axis is traced or diagonal)
structured  s₁·(R − U) + s₂·(R − U) (cotangents, not weight gradients) + the plan's terms of G
=========== ==============================================================================

(each method's module computes its row: ``Method.flops``, from the shared parts here) plus one
primal forward pass per example and side for each group; with ``x2 = x1`` the second
side's passes are shared where the method shares them (jacobian, structured).

FLOPs are not time. Two measured corrections (bench/RESULTS.md, 2-core CPU and H100):
per-example weight gradients of a convolution, which the jacobian method gets from ``vmap`` of
reverse mode, run as grouped convolutions at a fraction of a matmul's rate
(``ntkc.rules.per_example_gradient_factor``, registered with the conv rule), where the structured method contracts the same numbers as
matmuls; and another method replaces structured only when clearly cheaper
(:data:`SWITCH_MARGIN`): its einsums are counted exactly, the others' autodiff programs only
estimated.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ntkc._compat import Literal
from ntkc.methods import registry, structured
from ntkc.passes.cost import eqn_flops, last_reads, live_peak
from ntkc.rules import per_example_gradient_factor

# A mixed plan runs a program per group: prefer one method unless mixing is clearly cheaper,
# as the estimates are rough (FLOPs only).
MIXING_MARGIN = 0.9
# Another method replaces structured only below this fraction of its estimate.
SWITCH_MARGIN = 0.8
# XLA holds batched tangents and cotangents (a JVP or VJP per output entry) at 0.7-1.75x the
# least a liveness scan finds (layout copies between ops; bench/estimates.py): the working sets
# count them at the top of that range, so that a program fits the limit it was planned for.
BATCHED_TANGENTS = 1.5
# XLA's CPU programs hold two flipped copies of a convolution kernel that a cotangent pass runs
# through (ResNet-18's structured program: six 3x3x512x512 buffers for three such kernels).
FLIPPED_COPIES = 2


@dataclasses.dataclass(frozen=True)
class LinearMap:
    """The linear map's equations as the planner sees them.

    Attributes:
      flops: ``(E,)`` FLOPs of each tangent equation (for one example under ``vmap_axes``).
      reach: ``(L, E)`` bool: leaf ``i``'s tangent flows through equation ``e``.
      uses: ``(L, E)`` bool: equation ``e`` consumes leaf ``i``'s value (a use).
      slow: ``(E,)`` extra FLOPs-equivalent of a use equation when the jacobian method computes
        its per-example weight gradients (see :data:`CONV_WEIGHT_GRADIENT_FACTOR`).
      values, born, dies: ``(E,)`` entries of each equation's tangent outputs (one example, one
        tangent), and the indices of the equations that compute them and last read them: the
        tangents alive at once (:meth:`tangents`).
      residual_sizes, residual_reads: ``(R,)`` entries of each primal value (activations,
        masks) that the equations read, and ``(R, E)`` which equations read it: what a reverse
        pass keeps per example (:meth:`residuals`).
      flipped: ``(E,)`` entries of the kernel a convolution of a tangent by a primal kernel
        reads: its transpose (the cotangent pass) runs on a flipped copy (:meth:`copies`).
    """

    flops: np.ndarray
    reach: np.ndarray
    uses: np.ndarray
    slow: np.ndarray
    values: np.ndarray | None = None
    born: np.ndarray | None = None
    dies: np.ndarray | None = None
    residual_sizes: np.ndarray | None = None
    residual_reads: np.ndarray | None = None
    flipped: np.ndarray | None = None

    @classmethod
    def from_analysis(cls, analysis) -> "LinearMap":
        """From ``ntkc.passes.uses.Analysis``: one forward sweep of leaf bitmasks."""
        jaxpr = analysis.traced.jaxpr.jaxpr
        n = analysis.traced.n_params
        masks = {v: 1 << i for i, v in enumerate(analysis.traced.tangent_vars)}
        flops, reached = [], []
        for k, eqn in enumerate(jaxpr.eqns):
            mask = 0
            for v in eqn.invars:
                if not isinstance(v, Literal):
                    mask |= masks.get(v, 0)
            if not mask:
                continue
            for v in eqn.outvars:
                masks[v] = mask
            if k not in analysis.chain_eqns:
                flops.append((k, eqn_flops(eqn)))
                reached.append(mask)
        column = {k: j for j, (k, _) in enumerate(flops)}
        memory = _tangent_memory(jaxpr, [k for k, _ in flops], masks)
        cost = np.array([c for _, c in flops], float).reshape(-1)
        reach = np.array([[bool(m >> i & 1) for m in reached] for i in range(n)], bool)
        reach = reach.reshape(n, -1)
        uses = np.zeros_like(reach)
        slow = np.zeros_like(cost)
        for use in analysis.uses:
            if use.eqn_index is not None:
                j = column[use.eqn_index]
                uses[use.chain.leaf, j] = True
                primitive = analysis.traced.jaxpr.jaxpr.eqns[use.eqn_index].primitive
                slow[j] = (per_example_gradient_factor(primitive) - 1) * cost[j]
        return cls(cost, reach, uses, slow, *memory)

    @classmethod
    def uniform(cls, n_leaves: int, flops: float, values: float = 0.0) -> "LinearMap":
        """Without an analysis: every leaf reaches one equation of ``flops``, no uses, whose
        tangents and residuals are ``values`` entries (per example)."""
        one = np.ones(1)
        return cls(np.array([flops], float), np.ones((n_leaves, 1), bool),
                   np.zeros((n_leaves, 1), bool), np.zeros(1), values * one, 0 * one, 0 * one,
                   values * one, np.ones((1, 1), bool), np.zeros(1))

    def reached(self, group: Sequence[int]) -> float:
        return float(self.flops @ self.reach[list(group)].any(0))

    def used(self, group: Sequence[int]) -> float:
        return float(self.flops @ self.uses[list(group)].any(0))

    def slow_gradients(self, group: Sequence[int]) -> float:
        return float(self.slow @ self.uses[list(group)].any(0))

    def tangents(self, group: Sequence[int]) -> float:
        """The tangent entries alive at once when the equations that ``group``'s tangents reach
        run in order (one example, one tangent): forward mode's working set, and (its
        transpose) a cotangent pass's; the least a liveness scan finds times
        :data:`BATCHED_TANGENTS`."""
        if self.values is None:
            return 0.0
        on = self.reach[list(group)].any(0)
        return BATCHED_TANGENTS * live_peak(self.values[on], self.born[on], self.dies[on])

    def residuals(self, group: Sequence[int]) -> float:
        """Entries of the primal values that those equations read (one example)."""
        if self.residual_sizes is None:
            return 0.0
        on = self.reach[list(group)].any(0)
        return float(self.residual_sizes @ self.residual_reads[:, on].any(1))

    def copies(self, group: Sequence[int]) -> float:
        """Entries of the flipped convolution kernels that a cotangent pass through those
        equations reads (:data:`FLIPPED_COPIES` of each, not per example)."""
        if self.flipped is None:
            return 0.0
        return FLIPPED_COPIES * float(self.flipped @ self.reach[list(group)].any(0))


def _tangent_memory(jaxpr, columns: list, masks: dict) -> tuple:
    """:class:`LinearMap`'s memory fields for the equations ``columns`` (indices into
    ``jaxpr.eqns``) of a linear jaxpr whose tangent variables are the keys of ``masks``."""
    last = last_reads(jaxpr)
    size = lambda v: math.prod(v.aval.shape)
    arguments = set(jaxpr.invars) | set(jaxpr.constvars)  # held by the caller, not per example
    values, dies, flipped = [], [], []
    residuals: dict = {}  # primal var -> the columns that read it
    for j, k in enumerate(columns):
        eqn = jaxpr.eqns[k]
        outs = [v for v in eqn.outvars if v in last]
        values.append(sum(size(v) for v in outs))
        dies.append(max((last[v] for v in outs), default=k))
        kernel = 0
        for i, v in enumerate(eqn.invars):
            if isinstance(v, Literal) or v in masks:
                continue
            if v not in arguments:
                residuals.setdefault(v, []).append(j)
            # the input gradient of conv(tangent, kernel) convolves with the flipped kernel
            if eqn.primitive.name == "conv_general_dilated" and i == 1 and eqn.invars[0] in masks:
                kernel = size(v)
        flipped.append(kernel)
    sizes = np.array([size(v) for v in residuals], float).reshape(-1)
    reads = np.zeros((len(residuals), len(columns)), bool)
    for r, js in enumerate(residuals.values()):
        reads[r, js] = True
    return (np.array(values, float).reshape(-1), np.array(columns, float).reshape(-1),
            np.array(dies, float).reshape(-1), sizes, reads, np.array(flipped, float).reshape(-1))


@dataclasses.dataclass(frozen=True)
class OutputShape:
    """One output leaf, as the formulas need it.

    Attributes:
      size1, size2: the output's entries over the whole batch of x1 and of x2 (``s``).
      contraction: the kernel's entries times the traced axes' size (``K``).
      pairs_all: the example axis is free (every example pair) rather than traced or diagonal.
    """

    size1: int
    size2: int
    contraction: int
    pairs_all: bool


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Everything the per-leaf estimates depend on, for one call of a kernel function.

    Attributes:
      outputs: one :class:`OutputShape` per output leaf.
      examples1: examples in x1 (1 without ``vmap_axes``).
      forward1, forward2: FLOPs of one primal forward pass of one example (of the batch without
        ``vmap_axes``) of x1 and of x2.
      same_inputs: ``x2`` is ``x1``.
      leaf_sizes: parameters per leaf.
      linear: the linear map (per example of x1).
      terms: per leaf, the FLOPs of its structured terms; None when the structured method could
        not be planned.
      itemsize: bytes per number.
      structured_bytes: the structured program's operands: every side's cotangents and
        factors and the largest contraction step, as if all were alive at once.
      structured_streamed: the same when each use's cotangents are contracted as the cotangent
        pass gives them: the factors, each side's largest cotangent and its layout copy, and
        the largest step (the pass's own live cotangents are :attr:`linear`'s).
      unavailable: methods that cannot run the model (a while loop they would reverse).
      fixed_bytes: what every method's program holds besides its working set: its arguments
        (params, inputs) and the kernel it returns.
    """

    outputs: tuple
    examples1: int
    examples2: int
    forward1: float
    forward2: float
    same_inputs: bool
    leaf_sizes: tuple
    linear: LinearMap
    terms: tuple | None
    itemsize: int = 4
    structured_bytes: float | None = None
    structured_streamed: float | None = None
    unavailable: frozenset = frozenset()
    fixed_bytes: float = 0.0

    @property
    def methods(self) -> tuple:
        """The registered per-leaf methods that can run the model, in registration order
        (``Method.can_run``; the unavailable ones: see ``ntkc.passes.capability``)."""
        return tuple(m.name for m in registry.per_leaf_methods() if m.can_run(self))

    # The parts that the methods' estimates (``Method.flops``) share.

    def parameters(self, group: Sequence[int]) -> int:
        """The number of parameters in the leaves ``group``."""
        return sum(self.leaf_sizes[i] for i in group)

    def on_x2(self, flops: float) -> float:
        """``flops`` of a pass over one x1 example, for one x2 example (scaled as their primal
        forward passes are)."""
        return flops * (self.forward2 / self.forward1 if self.forward1 else 1.0)

    def primal_passes(self, shared: bool) -> float:
        """One primal forward pass per example and side; ``shared``: the method computes x1's
        once for both sides when x2 is x1."""
        total = self.examples1 * self.forward1 + self.examples2 * self.forward2
        if shared and self.same_inputs:
            total -= self.examples2 * self.forward2
        return total

    def reverse_passes(self, flops: float) -> float:
        """A pass of ``flops`` (over one x1 example) per output entry of each side, x2's
        scaled by :meth:`on_x2`; when x2 is x1, x1's passes serve both sides."""
        return sum(o.size1 * flops + (0 if self.same_inputs else o.size2 * self.on_x2(flops))
                   for o in self.outputs)

    # Per method and group of leaves, and per assignment of a method to every leaf.

    def group_cost(self, method: str, group: Sequence[int]) -> float:
        """Estimated FLOPs of ``method`` computing the leaves ``group``'s part of the kernel."""
        return registry.get(method).flops(self, group) if group else 0.0

    def memory(self, method: str, group: Sequence[int]) -> float:
        """Estimated working-set bytes of ``method`` on the leaves ``group`` (its arguments and
        the kernel not counted: :attr:`fixed_bytes`)."""
        return float(registry.get(method).working_set(self, group)) if group else 0.0

    def _groups(self, assignment: Sequence[str]):
        """``(method, its leaves)`` of an assignment, in registration order."""
        for m in registry.per_leaf_names():
            yield m, [i for i, a in enumerate(assignment) if a == m]

    def peak(self, assignment: Sequence[str]) -> float:
        """Estimated bytes of an assignment's program, as XLA's memory analysis counts them:
        its groups' working sets together (one program), its arguments and its kernel."""
        return self.fixed_bytes + sum(self.memory(m, group)
                                      for m, group in self._groups(assignment))

    def cost(self, assignment: Sequence[str]) -> float:
        """Total estimated FLOPs of a per-leaf assignment of methods."""
        return sum(self.group_cost(m, group) for m, group in self._groups(assignment))


def assign(cost_model: CostModel, memory_limit: float | None = None) -> tuple[str, ...] | None:
    """The per-leaf assignment: one method for all leaves unless a mix found by local search
    (from every single-method plan) is below :data:`MIXING_MARGIN` of it.

    The single method is the cheapest, except that structured is kept unless another is below
    :data:`SWITCH_MARGIN` of it. With ``memory_limit`` only assignments whose estimated working
    set fits are considered; None when none does.
    """
    n = len(cost_model.leaf_sizes)
    methods = cost_model.methods
    fits = lambda a: memory_limit is None or cost_model.peak(a) <= memory_limit
    single = {m: cost_model.cost([m] * n) for m in methods if fits([m] * n)}
    best, best_cost = None, float("inf")
    if single:
        chosen = min(single, key=single.get)
        preferred = structured.NAME  # its einsums are counted exactly, the others estimated
        if preferred in single and single[chosen] >= SWITCH_MARGIN * single[preferred]:
            chosen = preferred
        best, best_cost = (chosen,) * n, MIXING_MARGIN * single[chosen]
    for start in methods:
        current, cost = [start] * n, cost_model.cost([start] * n)
        if not fits(current):
            continue
        improved = True
        while improved:
            improved = False
            for i in range(n):
                for m in methods:
                    if m == current[i]:
                        continue
                    trial = current[:i] + [m] + current[i + 1:]
                    c = cost_model.cost(trial)
                    if c < cost * (1 - 1e-9) and fits(trial):
                        current, cost, improved = trial, c, True
        if len(set(current)) > 1 and cost < best_cost:
            best, best_cost = tuple(current), cost
    return best
