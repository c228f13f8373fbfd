"""Plans: the structured program's contractions as data, a table, a graph and Graphviz text.

A plan is built from the structured program's schedule (``ntkc.pipeline.schedule``: an abstract
evaluation, no compilation), the same schedule the kernel function executes.
"""

from __future__ import annotations

import dataclasses
import string

from ntkc.ir import Plan, Term
from ntkc.methods import structured
from ntkc.passes.cost import Cost


def _letters(labels_list, output):
    names = {}
    pool = iter(string.ascii_letters)
    for labels in list(labels_list) + [output]:
        for l in labels:
            if l not in names:
                names[l] = next(pool, "?")
    fmt = lambda ls: "".join(names[l] for l in ls)
    return ",".join(map(fmt, labels_list)) + "->" + fmt(output)


def _members(tree):
    return frozenset([tree]) if isinstance(tree, int) else _members(tree[0]) | _members(tree[1])


def _subtrees(tree):
    yield tree
    if not isinstance(tree, int):
        yield from _subtrees(tree[0])
        yield from _subtrees(tree[1])


def _method_of(record) -> str:
    if any(s == "dense" for s in record.structure):
        return "dense"
    sides = record.sides
    side1 = frozenset(i for i, s in enumerate(sides) if s == 1)
    side2 = frozenset(i for i, s in enumerate(sides) if s == 2)
    groups = {_members(t) for t in _subtrees(record.path.tree)}
    return "jacobian" if side1 in groups and side2 in groups else "structured"


def _path_str(tree) -> str:
    return str(tree) if isinstance(tree, int) else f"({_path_str(tree[0])},{_path_str(tree[1])})"


def build_plan(records, cotangents: Cost, method: str, kernel_shapes, output_names, leaf_names,
               leaf_methods: dict, method_costs: dict, fallbacks=(), split=None, kernel=None):
    terms = []
    for r in records:
        if r.kind != "term":
            continue
        info = r.path
        leaf = leaf_names[r.param_leaf]
        own = leaf_methods[leaf]
        terms.append(Term(
            output=output_names[r.output_leaf],
            leaf=leaf,
            primitives=tuple(r.primitives),
            structure=tuple(r.structure),
            method=_method_of(r) if own == structured.NAME else own,
            einsum=_letters(r.labels, r.output),
            order=_path_str(info.tree),
            cost=dataclasses.replace(info.cost, flops=info.cost.flops - info.repeated_flops),
            naive=info.naive,
        ))
    fallbacks = tuple(dataclasses.replace(f, leaf=leaf_names[f.leaf]) for f in fallbacks)
    return Plan(tuple(terms), cotangents, method, tuple(kernel_shapes), tuple(records),
                leaf_methods, method_costs, fallbacks, split, kernel)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def format_plan(plan: Plan) -> str:
    header = ("output", "param leaf", "primitives", "structure", "method", "einsum", "order",
              "flops", "peak B")
    rows = [header]
    for t in plan.terms:
        rows.append((t.output, t.leaf, " x ".join(t.primitives), " | ".join(dict.fromkeys(t.structure)),
                     t.method, t.einsum, t.order, _fmt(t.cost.flops), _fmt(t.cost.peak)))
    widths = [min(max(len(str(r[i])) for r in rows), 48) for i in range(len(header))]
    clip = lambda s, w: s if len(s) <= w else s[: w - 1] + "…"
    split = f" {plan.split}" if plan.split else ""
    lines = [f"Plan: method={plan.method}{split}, kernels "
             f"{', '.join(map(str, plan.kernel_shapes))}"]
    for i, r in enumerate(rows):
        lines.append("  ".join(clip(str(c), w).ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    chosen = sum((t.cost.flops for t in plan.terms), 0.0)
    naive = sum((t.naive.flops for t in plan.terms), 0.0)
    lines.append(
        f"terms: {len(plan.terms)}, contractions {_fmt(chosen)} FLOPs (naive order {_fmt(naive)}, "
        f"{_fmt(naive / max(chosen, 1))}x); cotangent passes ~{_fmt(plan.cotangents.flops)} FLOPs; "
        f"peak {_fmt(plan.cost.peak)} B"
    )
    for f in plan.fallbacks:
        where = f" at {f.where}" if f.where else ""
        lines.append(f"dense fallback: {f.primitive}{where}, param {f.leaf}, x{f.side}: "
                     f"~{_fmt(f.flops)} FLOPs, ~{_fmt(f.bytes)} B to build")
    if plan.method_costs:
        ranked = sorted(plan.method_costs.items(), key=lambda kv: kv[1])
        lines.append("estimated FLOPs per method: "
                     + ", ".join(f"{m} {_fmt(c)}" for m, c in ranked))
    return "\n".join(lines)


def plan_graph(plan: Plan):
    """Parameters -> uses -> (factors, cotangents) -> contractions -> kernels, as a DiGraph."""
    import networkx as nx

    g = nx.DiGraph()
    for i, (t, r) in enumerate(zip(plan.terms, [r for r in plan.records if r.kind == "term"])):
        param = f"param {t.leaf}"
        g.add_node(param, kind="parameter")
        term = f"term {i}: {t.einsum}"
        g.add_node(term, kind="contraction", method=t.method, flops=t.cost.flops, order=t.order)
        out = f"kernel {t.output}"
        g.add_node(out, kind="kernel")
        for side, u, prim, structure in zip((1, 2), r.uses, t.primitives, t.structure):
            use = f"use {u} ({prim}) x{side}"
            factors = f"factors {u} x{side}: {structure}"
            cot = f"cotangent {u} x{side}"
            g.add_node(use, kind="use", primitive=prim)
            g.add_node(factors, kind="factor", structure=structure)
            g.add_node(cot, kind="cotangent")
            g.add_edge(param, use)
            g.add_edge(use, factors)
            g.add_edge(use, cot)
            g.add_edge(factors, term)
            g.add_edge(cot, term)
        g.add_edge(term, out)
    return g


_SHAPES = {"parameter": "box", "use": "ellipse", "factor": "note", "cotangent": "note",
           "contraction": "diamond", "kernel": "doubleoctagon"}


def to_dot(graph) -> str:
    quote = lambda s: '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines = ["digraph ntkc_plan {", "  rankdir=LR;"]
    for node, data in graph.nodes(data=True):
        shape = _SHAPES.get(data.get("kind"), "ellipse")
        lines.append(f"  {quote(node)} [shape={shape}];")
    for a, b in graph.edges():
        lines.append(f"  {quote(a)} -> {quote(b)};")
    lines.append("}")
    return "\n".join(lines)
