"""Output-axis semantics shared by every method: trace, diagonal and batch axes.

A kernel over one output leaf of shape ``S`` keeps, in output order, every axis that is not
traced: diagonal axes once, the others twice (``x1`` then ``x2``), exactly as neural-tangents'
``empirical_ntk_fn`` lays them out. Traced axes are summed over the pair and divided by their size.
"""

from __future__ import annotations

import dataclasses
import math
import string
from typing import Sequence


def canonicalize_axes(axes, ndim: int, name: str) -> tuple[int, ...]:
    """Turns an int or a sequence of ints into sorted non-negative axes, checking their range."""
    if axes is None:
        axes = ()
    if isinstance(axes, int):
        axes = (axes,)
    try:
        axes = tuple(axes)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {axes!r}") from None
    out = []
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool):
            raise TypeError(f"{name} must hold ints, got {a!r} in {axes!r}")
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{name}: axis {a} is out of range for an output of {ndim} dimension(s)"
            )
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} repeats an axis: {axes!r}")
    return tuple(sorted(out))


@dataclasses.dataclass(frozen=True)
class KernelAxes:
    """How the output axes of one output leaf appear in its kernel.

    Attributes:
      shape1: shape of this output leaf for ``x1``.
      shape2: shape of this output leaf for ``x2``.
      trace: canonical traced axes (summed over the pair, divided by their size).
      diagonal: canonical diagonal axes (kept once).
    """

    shape1: tuple[int, ...]
    shape2: tuple[int, ...]
    trace: tuple[int, ...]
    diagonal: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape1)

    @property
    def free(self) -> tuple[int, ...]:
        """Axes that appear twice in the kernel."""
        paired = set(self.trace) | set(self.diagonal)
        return tuple(a for a in range(self.ndim) if a not in paired)

    @property
    def trace_size(self) -> int:
        return math.prod(self.shape1[a] for a in self.trace)

    def layout(self) -> tuple[tuple[int, ...], ...]:
        """Per output axis, its positions in the kernel: none if traced, one if diagonal, two
        (``x1``'s then ``x2``'s) if free. The other layout methods all derive from this one."""
        out, pos = [], 0
        for a in range(self.ndim):
            width = 0 if a in self.trace else 1 if a in self.diagonal else 2
            out.append(tuple(range(pos, pos + width)))
            pos += width
        return tuple(out)

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return tuple(n for a, ps in enumerate(self.layout())
                     for n in (self.shape1[a], self.shape2[a])[:len(ps)])

    def kernel_labels(self) -> list[int]:
        """The kernel's axes as einsum integers: ``2a`` for output axis ``a`` (``x1``'s side),
        ``2a + 1`` for a free axis's ``x2`` side, in kernel order."""
        return [2 * a + k for a, ps in enumerate(self.layout()) for k in range(len(ps))]

    def labels(self, letters: str = string.ascii_letters) -> tuple[str, str, str]:
        """Einsum labels ``(out1, out2, kernel)`` for this leaf's output axes.

        Traced and diagonal axes share a label between ``out1`` and ``out2``; free axes get two.
        Uses the first ``2 * ndim`` of ``letters``.
        """
        paired = set(self.trace) | set(self.diagonal)
        l1 = [letters[2 * a] for a in range(self.ndim)]
        l2 = [letters[2 * a + (a not in paired)] for a in range(self.ndim)]
        out = [letters[i] for i in self.kernel_labels()]
        return "".join(l1), "".join(l2), "".join(out)

    def kernel_position(self, axis: int) -> tuple[int, ...]:
        """Positions in the kernel of output axis ``axis`` (one if diagonal, two if free)."""
        if not 0 <= axis < self.ndim:
            raise ValueError(axis)
        return self.layout()[axis]

    def mirror_permutation(self) -> list[int]:
        """The axes permutation that turns K(x2-side, x1-side) into K(x1-side, x2-side) for a
        symmetric kernel: every pair of free axes swapped, diagonal axes kept."""
        return [p for ps in self.layout() for p in reversed(ps)]

    def drop(self, axis: int) -> "KernelAxes":
        """The axes of the same leaf with output axis ``axis`` removed (per-example view)."""

        def shift(axes: Sequence[int]) -> tuple[int, ...]:
            return tuple(a - (a > axis) for a in axes if a != axis)

        return KernelAxes(
            shape1=self.shape1[:axis] + self.shape1[axis + 1 :],
            shape2=self.shape2[:axis] + self.shape2[axis + 1 :],
            trace=shift(self.trace),
            diagonal=shift(self.diagonal),
        )


def make_kernel_axes(shape1, shape2, trace_axes, diagonal_axes, leaf_name: str = "output") -> KernelAxes:
    """Checks the axes options against one output leaf and returns its :class:`KernelAxes`."""
    shape1, shape2 = tuple(shape1), tuple(shape2)
    if len(shape1) != len(shape2):
        raise ValueError(
            f"f(x1) and f(x2) have {leaf_name}s of different ranks: {shape1} and {shape2}"
        )
    ndim = len(shape1)
    trace = canonicalize_axes(trace_axes, ndim, "trace_axes")
    diagonal = canonicalize_axes(diagonal_axes, ndim, "diagonal_axes")
    both = set(trace) & set(diagonal)
    if both:
        raise ValueError(
            f"axes {sorted(both)} are in both trace_axes={trace_axes!r} and "
            f"diagonal_axes={diagonal_axes!r}; an axis is either traced or diagonal"
        )
    for kind, axes in (("trace_axes", trace), ("diagonal_axes", diagonal)):
        for a in axes:
            if shape1[a] != shape2[a]:
                raise ValueError(
                    f"{kind}: axis {a} has size {shape1[a]} in f(x1) ({leaf_name} shape {shape1}) "
                    f"but {shape2[a]} in f(x2) (shape {shape2}); a traced or diagonal axis must "
                    "have the same size on both sides"
                )
    return KernelAxes(shape1, shape2, trace, diagonal)
