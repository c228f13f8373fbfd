"""Contraction orders for einsum networks, chosen by cost under an optional memory limit.

Every optimiser has one signature, ``(inputs, output, sizes, memory_limit) -> tree`` where a tree
is an operand index or a pair of trees, and is registered by name in :data:`OPTIMIZERS`.
:func:`optimize` returns a :class:`PathInfo` with the path in opt_einsum's linear format (what
``jnp.einsum(..., optimize=path)`` takes) and the chosen cost against the naive one.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Sequence

from ntkc.passes.cost import Cost, contraction_cost, size_of

OPTIMIZERS: dict[str, Callable] = {}
OPTIMAL_MAX_OPERANDS = 8


class PathMemoryError(ValueError):
    """No contraction order keeps every step under ``memory_limit``."""


def register_optimizer(name: str):
    def decorate(fn):
        OPTIMIZERS[name] = fn
        return fn

    return decorate


def _result_labels(members: frozenset, inputs, output) -> tuple:
    """Labels of the contraction of ``members``: those still needed outside them."""
    outside = set(output)
    for i, labels in enumerate(inputs):
        if i not in members:
            outside.update(labels)
    seen = []
    for i in sorted(members):
        for l in inputs[i]:
            if l in outside and l not in seen:
                seen.append(l)
    return tuple(seen)


def _step(a_labels, b_labels, out_labels, sizes, itemsize):
    return contraction_cost([a_labels, b_labels], out_labels, sizes, itemsize)


@register_optimizer("optimal")
def optimal(inputs, output, sizes, memory_limit=None, itemsize=4):
    """Exhaustive search over all binary trees (dynamic programming over subsets): 3^n."""
    n = len(inputs)
    if n > OPTIMAL_MAX_OPERANDS:
        return greedy(inputs, output, sizes, memory_limit, itemsize)
    full = frozenset(range(n))
    best: dict[frozenset, tuple[Cost, object, tuple]] = {}
    for i in range(n):
        labels = _result_labels(frozenset([i]), inputs, output) if n > 1 else tuple(output)
        best[frozenset([i])] = (Cost(), i, tuple(inputs[i]))
    for size in range(2, n + 1):
        for members in map(frozenset, itertools.combinations(range(n), size)):
            out = tuple(output) if members == full else _result_labels(members, inputs, output)
            first = min(members)
            rest = sorted(members - {first})
            candidate = None
            for k in range(0, len(rest)):
                for extra in itertools.combinations(rest, k):
                    a = frozenset((first,) + extra)
                    b = members - a
                    if not b or a not in best or b not in best:
                        continue
                    ca, ta, la = best[a]
                    cb, tb, lb = best[b]
                    step = _step(la, lb, out, sizes, itemsize)
                    if memory_limit is not None and step.peak > memory_limit:
                        continue
                    total = ca + cb + step
                    if candidate is None or (total.flops, total.peak) < (candidate[0].flops, candidate[0].peak):
                        candidate = (total, (ta, tb), out)
            if candidate is not None:
                best[members] = candidate
    if full not in best:
        raise PathMemoryError(f"no contraction order fits memory_limit={memory_limit} bytes")
    return best[full][1]


@register_optimizer("greedy")
def greedy(inputs, output, sizes, memory_limit=None, itemsize=4):
    """Repeatedly contract the pair whose step is cheapest (FLOPs, then peak)."""
    live = {i: (i, tuple(labels), frozenset([i])) for i, labels in enumerate(inputs)}
    while len(live) > 1:
        choice = None
        for a, b in itertools.combinations(sorted(live), 2):
            ta, la, ma = live[a]
            tb, lb, mb = live[b]
            members = ma | mb
            last = len(live) == 2
            out = tuple(output) if last else _result_labels(members, inputs, output)
            step = _step(la, lb, out, sizes, itemsize)
            if memory_limit is not None and step.peak > memory_limit:
                continue
            shares = bool(set(la) & set(lb))
            key = (not shares, step.flops, step.peak)
            if choice is None or key < choice[0]:
                choice = (key, a, b, out, members)
        if choice is None:
            raise PathMemoryError(f"no contraction order fits memory_limit={memory_limit} bytes")
        _, a, b, out, members = choice
        node = (live[a][0], live[b][0])
        del live[a], live[b]
        live[min(members)] = (node, out, members)
    return next(iter(live.values()))[0]


def _opt_einsum_optimizer(kind):
    def run(inputs, output, sizes, memory_limit=None, itemsize=4):
        import opt_einsum

        letters = {}
        sym = lambda l: letters.setdefault(l, opt_einsum.get_symbol(len(letters)))
        eq = ",".join("".join(map(sym, i)) for i in inputs) + "->" + "".join(map(sym, output))
        shapes = [tuple(sizes[l] for l in i) for i in inputs]
        limit = None if memory_limit is None else memory_limit // itemsize
        try:
            path, _ = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=kind,
                                               memory_limit=limit)
        except RuntimeError as err:  # dp: no path under its (intermediate-only) limit
            raise PathMemoryError(f"no contraction order fits memory_limit={memory_limit} "
                                  f"bytes ({err})") from None
        nodes = list(range(len(inputs)))
        for step in path:
            picked = [nodes[i] for i in step]
            for i in sorted(step, reverse=True):
                del nodes[i]
            tree = picked[0]
            for p in picked[1:]:
                tree = (tree, p)
            nodes.append(tree)
        return nodes[0]

    return run


for _kind in ("dp", "branch-2", "random-greedy"):
    register_optimizer(f"opt_einsum-{_kind}")(_opt_einsum_optimizer(_kind))


@dataclasses.dataclass(frozen=True)
class PathInfo:
    """A chosen contraction order.

    Attributes:
      path: opt_einsum's linear format: pairs of positions in the shrinking operand list.
      tree: the same order as nested pairs of operand indices.
      cost: total cost of the chosen order.
      naive: cost of one step over every label at once.
      steps: ``(a labels, b labels, result labels, Cost)`` per step.
      repeated_flops: FLOPs of the steps that repeat another step of the same einsum on the same
        arrays (x2's operands when x2 is x1, see :func:`optimize`'s ``mirror``): XLA computes
        them once (common subexpressions), so they cost nothing; ``cost`` counts them.
    """

    path: tuple
    tree: object
    cost: Cost
    naive: Cost
    steps: tuple
    repeated_flops: float = 0.0

    def __repr__(self) -> str:
        speedup = self.naive.flops / max(self.cost.flops, 1)
        repeated = (f", {self.repeated_flops:.3g} of them repeated on the same arrays"
                    if self.repeated_flops else "")
        lines = [f"PathInfo: {len(self.steps)} steps, {self.cost.flops:.3g} FLOPs{repeated} "
                 f"(naive {self.naive.flops:.3g}, {speedup:.3g}x), peak {self.cost.peak:.3g} B"]
        for a, b, out, c in self.steps:
            lines.append(f"  {a} x {b} -> {out}: {c.flops:.3g} FLOPs")
        return "\n".join(lines)


def _linearize(tree, inputs, output, sizes, itemsize):
    """Tree -> linear path, cost and steps."""
    nodes = list(range(len(inputs)))  # positions hold tree nodes; leaves are ints
    labels = {i: tuple(l) for i, l in enumerate(inputs)}
    members = {i: frozenset([i]) for i in range(len(inputs))}
    path, steps, total = [], [], Cost()
    counter = itertools.count(len(inputs))

    def visit(t):
        nonlocal total
        if isinstance(t, int):
            return t
        a, b = visit(t[0]), visit(t[1])
        ids = nodes.index(a), nodes.index(b)
        path.append(tuple(sorted(ids)))
        m = members[a] | members[b]
        out = tuple(output) if len(m) == len(inputs) else _result_labels(m, inputs, output)
        step = _step(labels[a], labels[b], out, sizes, itemsize)
        steps.append((labels[a], labels[b], out, step))
        total = total + step
        for i in sorted(ids, reverse=True):
            del nodes[i]
        new = next(counter)
        nodes.append(new)
        labels[new], members[new] = out, m
        return new

    visit(tree)
    return tuple(path), total, tuple(steps)


def _repeated_steps(tree, mirror) -> list[bool]:
    """Per step of ``tree`` (post-order, as :func:`_linearize` lists them): whether it contracts
    mirrored operands alone, in the same order as a step on the operands they mirror."""
    originals, steps = set(), []

    def visit(t):  # a subtree's key: its shape, mirrored operands named by their originals
        if isinstance(t, int):
            return (mirror.get(t, t),), t in mirror
        (ka, ma), (kb, mb) = visit(t[0]), visit(t[1])
        key, mirrored = (ka, kb), ma and mb
        steps.append((key, mirrored))
        if not mirrored:
            originals.add(key)
        return key, mirrored

    visit(tree)
    return [mirrored and key in originals for key, mirrored in steps]


def _substitute(tree, leaves):
    if isinstance(tree, int):
        return leaves[tree]
    return (_substitute(tree[0], leaves), _substitute(tree[1], leaves))


def repeated_flops(tree, steps, mirror) -> float:
    """FLOPs of ``tree``'s steps (``steps``, as :func:`_linearize` lists them) that repeat a
    step on the operands ``mirror`` maps to."""
    return sum(s[3].flops for s, r in zip(steps, _repeated_steps(tree, mirror)) if r)


def _effective(tree, inputs, output, sizes, itemsize, mirror):
    _, cost, steps = _linearize(tree, inputs, output, sizes, itemsize)
    return cost.flops - repeated_flops(tree, steps, mirror), cost.peak


def _with_shared_sides(tree, inputs, output, sizes, optimizer, memory_limit, itemsize, mirror):
    """The cheapest of ``tree`` and the orders that contract a set of operands and, in the same
    order, the operands that mirror them (computed once), counting the mirror as free."""
    best, best_cost = tree, _effective(tree, inputs, output, sizes, itemsize, mirror)
    of = {original: copy for copy, original in mirror.items()}
    for r in range(2, len(of) + 1):
        for group in itertools.combinations(sorted(of), r):
            copies = [of[i] for i in group]
            rest = [i for i in range(len(inputs)) if i not in group and i not in copies]
            labels = [_result_labels(frozenset(m), inputs, output) for m in (group, copies)]
            try:
                inner = optimizer([inputs[i] for i in group], labels[0], sizes, memory_limit,
                                  itemsize)
                outer = optimizer(labels + [inputs[i] for i in rest], output, sizes,
                                  memory_limit, itemsize)
            except PathMemoryError:
                continue
            candidate = _substitute(outer, [_substitute(inner, group), _substitute(inner, copies)]
                                    + rest)
            cost = _effective(candidate, inputs, output, sizes, itemsize, mirror)
            if memory_limit is not None and cost[1] > memory_limit:
                continue
            if cost < best_cost:
                best, best_cost = candidate, cost
    return best


def optimize(inputs: Sequence[Sequence], output: Sequence, sizes, method: str = "auto",
             memory_limit: int | None = None, itemsize: int = 4,
             mirror: dict[int, int] | None = None) -> PathInfo:
    """The contraction order of ``inputs -> output`` chosen by ``method``.

    Args:
      inputs: labels of each operand.
      output: labels of the result.
      sizes: label -> size.
      method: a name in :data:`OPTIMIZERS`, or ``"auto"`` (optimal up to
        ``OPTIMAL_MAX_OPERANDS`` operands, greedy beyond).
      memory_limit: bytes no single step may exceed, or None.
      mirror: operand -> the operand whose array it is, under other labels (a term of x2=None:
        x2's cotangent and factors are x1's). A step that repeats a step on the operands it
        mirrors costs nothing (XLA computes it once), so orders that contract a group of
        operands and their mirrors alike are searched too.
    """
    if method == "auto":
        method = "optimal" if len(inputs) <= OPTIMAL_MAX_OPERANDS else "greedy"
    if method not in OPTIMIZERS:
        raise ValueError(f"unknown path optimizer {method!r}; valid: {', '.join(sorted(OPTIMIZERS))}")
    naive = contraction_cost(inputs, output, sizes, itemsize)
    if len(inputs) == 1:
        return PathInfo((), 0, naive, naive, ())
    tree = OPTIMIZERS[method](inputs, output, sizes, memory_limit, itemsize)
    mirror = dict(mirror or {})
    if mirror:
        tree = _with_shared_sides(tree, inputs, output, sizes, OPTIMIZERS[method], memory_limit,
                                  itemsize, mirror)
    path, cost, steps = _linearize(tree, inputs, output, sizes, itemsize)
    if memory_limit is not None and cost.peak > memory_limit:
        # opt_einsum's optimisers limit intermediates only, not operands plus result.
        raise PathMemoryError(f"no contraction order found by {method!r} fits memory_limit="
                              f"{memory_limit} bytes (its best has a step of {cost.peak:.3g} bytes)")
    return PathInfo(path, tree, cost, naive, steps, repeated_flops(tree, steps, mirror))
