"""The cost model (:mod:`ntkc.passes.cost`) and the path optimisers (:mod:`ntkc.passes.path`).

* ``Cost`` is an immutable value that adds; ``contraction_cost`` gives exact counts on tiny shapes;
* ``optimal`` finds the hand-computed minimal-FLOP order (and its steps) on small networks: a
  matrix chain and both regimes of the NTK dense-layer network (wide features, many pixels);
* it is never worse than opt_einsum's own choices, measured with ntkc's cost model;
* every registered optimiser's path gives ``np.einsum``'s numbers through ``jnp.einsum``;
* ``memory_limit`` steers or refuses the order; bad names, ``"auto"``, one operand; reprs;
* ``mirror`` (x2 is x1): steps that repeat x1's on the same arrays are free, which can change
  the order, and only a mirrored step in the same order as its original counts as repeated.
"""

from __future__ import annotations

import dataclasses
import string

import jax.numpy as jnp
import numpy as np
import opt_einsum
import pytest

from ntkc.passes.cost import Cost, contraction_cost
from ntkc.passes.path import (
    OPTIMAL_MAX_OPERANDS,
    OPTIMIZERS,
    PathInfo,
    PathMemoryError,
    _repeated_steps,
    optimize,
)

# --------------------------------------------------------------------------------------------
# helpers


def random_network(seed: int, n_ops: int, max_size: int = 9, n_pool: int = 7):
    """A random einsum network: operands with 1-4 distinct labels, an output subset, sizes."""
    rng = np.random.default_rng(seed)
    pool = list(string.ascii_lowercase[:n_pool])
    inputs = []
    for _ in range(n_ops):
        k = int(rng.integers(1, 5))
        inputs.append(tuple(rng.choice(pool, size=k, replace=False).tolist()))
    used = sorted(set().union(*map(set, inputs)))
    output = [l for l in used if rng.random() < 0.35]
    rng.shuffle(output)  # any order: the last step must produce it as given
    output = tuple(output)
    sizes = {l: int(rng.integers(1, max_size + 1)) for l in used}
    return inputs, output, sizes


def linear_path_cost(inputs, output, sizes, path, itemsize=4) -> Cost:
    """ntkc's cost of an opt_einsum linear path, evaluated independently of ``path._linearize``.

    A step of more than two operands is folded into pairs, left to right.
    """
    live = [(tuple(l), frozenset([i])) for i, l in enumerate(inputs)]
    n = len(inputs)
    total = Cost()

    def result(members):
        if len(members) == n:
            return tuple(output)
        outside = set(output)
        for i, l in enumerate(inputs):
            if i not in members:
                outside |= set(l)
        return tuple(sorted({l for i in members for l in inputs[i]} & outside))

    for step in path:
        picked = [live[i] for i in step]
        for i in sorted(step, reverse=True):
            del live[i]
        labels, members = picked[0]
        for other_labels, other_members in picked[1:]:
            members = members | other_members
            out = result(members)
            total = total + contraction_cost([labels, other_labels], out, sizes, itemsize)
            labels = out
        live.append((labels, members))
    assert len(live) == 1 and len(live[0][1]) == n
    return total


def opt_einsum_path(inputs, output, sizes, kind):
    """opt_einsum's own ``contract_path`` on the network (no ntkc code involved)."""
    sym = {l: opt_einsum.get_symbol(i) for i, l in enumerate(sorted(sizes))}
    eq = ",".join("".join(sym[l] for l in i) for i in inputs) + "->" + "".join(sym[l] for l in output)
    shapes = [tuple(sizes[l] for l in i) for i in inputs]
    path, _ = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=kind)
    return path


def arrays_for(inputs, sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal([sizes[l] for l in labels]) for labels in inputs]


def einsum_jnp(inputs, output, arrays, path):
    """``jnp.einsum`` of interleaved operands (integer labels) along ``path``."""
    ids = {l: i for i, l in enumerate(sorted({l for i in inputs for l in i} | set(output)))}
    args = []
    for a, labels in zip(arrays, inputs):
        args += [jnp.asarray(a), [ids[l] for l in labels]]
    args.append([ids[l] for l in output])
    return np.asarray(jnp.einsum(*args, optimize=list(path) or [(0,)]))


def einsum_np(inputs, output, arrays):
    ids = {l: i for i, l in enumerate(sorted({l for i in inputs for l in i} | set(output)))}
    args = []
    for a, labels in zip(arrays, inputs):
        args += [a, [ids[l] for l in labels]]
    args.append([ids[l] for l in output])
    return np.einsum(*args)


def canonical_steps(steps):
    """Steps as a sorted list of ((a, b) label strings, result labels, FLOPs), orientation-free.

    ``steps`` holds ``(a, b, out, cost)`` with a Cost or with FLOPs as the last item.
    """
    key = lambda labels: "".join(sorted(labels))
    out = []
    for a, b, res, c in steps:
        flops = c.flops if isinstance(c, Cost) else c
        out.append((tuple(sorted((key(a), key(b)))), key(res), flops))
    return sorted(out)


def check_path_valid(info: PathInfo, n_ops: int):
    live = n_ops
    for step in info.path:
        assert len(step) == 2 and len(set(step)) == 2
        assert all(0 <= i < live for i in step), (step, live)
        live -= 1
    assert live == 1
    assert len(info.steps) == len(info.path) == n_ops - 1
    assert sum(s[3] for s in info.steps) == info.cost


# --------------------------------------------------------------------------------------------
# 1. Cost and contraction_cost


def test_cost_is_frozen():
    c = Cost(1, 2, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.flops = 5
    assert hash(c) == hash(Cost(1, 2, 3))
    assert Cost() == Cost(0, 0, 0)


def test_cost_adds():
    a, b = Cost(10, 100, 50), Cost(5, 7, 80)
    assert a + b == Cost(15, 107, 80)
    assert b + a == Cost(15, 107, 80)
    assert a + Cost() == a
    # inputs untouched
    assert a == Cost(10, 100, 50) and b == Cost(5, 7, 80)


def test_cost_sum_builtin():
    costs = [Cost(1, 2, 3), Cost(4, 5, 9), Cost(7, 8, 6)]
    assert sum(costs) == Cost(12, 15, 9)
    assert sum([Cost(2, 3, 4)]) == Cost(2, 3, 4)
    assert sum(costs, Cost()) == Cost(12, 15, 9)


def test_cost_repr():
    r = repr(Cost(48, 208, 104))
    assert r == "Cost(flops=48, bytes=208, peak=104)"
    r = repr(Cost(1.5e9, 2e6, 3))
    assert r.startswith("Cost(") and "flops=1.5e+09" in r and "bytes=2e+06" in r and "peak=3" in r


def test_contraction_cost_matmul():
    sizes = {"i": 2, "j": 3, "k": 4}
    c = contraction_cost([("i", "j"), ("j", "k")], ("i", "k"), sizes, itemsize=4)
    assert c.flops == 2 * 2 * 3 * 4 == 48
    assert c.bytes == (6 + 12 + 8) * 4
    assert c.peak == c.bytes
    c8 = contraction_cost([("i", "j"), ("j", "k")], ("i", "k"), sizes, itemsize=8)
    assert c8.flops == c.flops and c8.bytes == 2 * c.bytes
    # the default itemsize is 4
    assert contraction_cost([("i", "j"), ("j", "k")], ("i", "k"), sizes) == c


def test_contraction_cost_outer_product():
    sizes = {"i": 2, "j": 3, "k": 5}
    c = contraction_cost([("i", "j"), ("k",)], ("i", "j", "k"), sizes, itemsize=4)
    assert c.flops == 2 * 3 * 5
    assert c.bytes == (6 + 5 + 30) * 4


def test_contraction_cost_elementwise_three_operands():
    sizes = {"i": 2, "j": 3}
    ij = ("i", "j")
    c = contraction_cost([ij, ij, ij], ij, sizes, itemsize=4)
    assert c.flops == 2 * 6  # two products per point, nothing summed
    assert c.bytes == 4 * 6 * 4


def test_contraction_cost_size_one_labels():
    sizes = {"i": 1, "j": 3, "k": 1}
    c = contraction_cost([("i", "j"), ("j", "k")], ("i", "k"), sizes, itemsize=4)
    assert c.flops == 2 * 3
    assert c.bytes == (3 + 3 + 1) * 4
    # every label of size 1: a scalar step
    ones = {"i": 1, "j": 1, "k": 1}
    c1 = contraction_cost([("i", "j"), ("j", "k")], ("i", "k"), ones, itemsize=4)
    assert c1 == Cost(2, 12, 12)


# --------------------------------------------------------------------------------------------
# 2. known-optimal orders


def test_matrix_chain_optimal():
    # A(10x100) B(100x5) C(5x50): (AB)C costs 2*10*100*5 + 2*10*5*50 = 15000 FLOPs,
    # A(BC) 2*100*5*50 + 2*10*100*50 = 150000, (AC) an outer product of 250000 and more.
    inputs = [("a", "b"), ("b", "c"), ("c", "d")]
    sizes = {"a": 10, "b": 100, "c": 5, "d": 50}
    info = optimize(inputs, ("a", "d"), sizes, "optimal", itemsize=4)
    assert info.cost.flops == 10000 + 5000
    assert info.path == ((0, 1), (0, 1))
    assert info.tree == ((0, 1), 2)
    (a1, b1, o1, c1), (a2, b2, o2, c2) = info.steps
    assert (a1, b1, o1) == (("a", "b"), ("b", "c"), ("a", "c"))
    assert c1 == Cost(10000, (1000 + 500 + 50) * 4, (1000 + 500 + 50) * 4)
    assert (a2, b2, o2) == (("a", "c"), ("c", "d"), ("a", "d"))
    assert c2 == Cost(5000, (50 + 250 + 500) * 4, (50 + 250 + 500) * 4)
    assert info.cost.bytes == c1.bytes + c2.bytes
    assert info.cost.peak == max(c1.peak, c2.peak)
    assert info.naive.flops == 2 * 10 * 100 * 5 * 50
    # opt_einsum agrees on the order
    assert linear_path_cost(inputs, ("a", "d"), sizes, opt_einsum_path(inputs, ("a", "d"), sizes, "optimal")).flops == 15000


# The NTK of a dense layer: x[n,i] is the layer's input, c[n,o,j] the cotangent at its output;
# the weight's Jacobian contracted with itself is c1[n,o,j] x1[n,i] x2[m,i] c2[m,p,j].
NTK_INPUTS = [("n", "o", "j"), ("n", "i"), ("m", "i"), ("m", "p", "j")]


def test_ntk_dense_wide_features():
    # Wide i, j; small n, m, o, p; output keeps n, m: contract x1.x2 over i and c1.c2 over j
    # separately, then multiply: never build the per-side Jacobian [n, o, i, j].
    n, m, o, p, i, j = 4, 5, 3, 2, 2048, 2048
    sizes = dict(n=n, m=m, o=o, p=p, i=i, j=j)
    output = ("n", "m", "o", "p")
    info = optimize(NTK_INPUTS, output, sizes, "optimal")
    expected = 2 * n * m * i + 2 * n * o * m * p * j + n * m * o * p
    assert info.cost.flops == expected
    # the best alternative: attach c1 (or c2) to x1.x2 first, then contract j
    assert info.cost.flops < 2 * n * m * i + n * m * o * j + 2 * n * m * o * p * j
    got = canonical_steps(info.steps)
    want = canonical_steps(
        [
            ("ni", "mi", "nm", 2 * n * m * i),
            ("noj", "mpj", "nomp", 2 * n * o * m * p * j),
            ("nm", "nomp", "nmop", n * m * o * p),
        ]
    )
    assert got == want
    for a, b, out, _ in info.steps:
        assert not ({"i", "j"} <= set(out)), f"per-side Jacobian built: {a} x {b} -> {out}"
    assert tuple(info.steps[-1][2]) == output


def test_ntk_dense_many_pixels():
    # Huge n, m (pixels, summed: a weight-shared layer's NTK over o, p); tiny i, j: contract each
    # side over its pixels first, c1.x1 -> [o, j, i] and c2.x2 -> [p, j, i], then over i, j.
    n, m, o, p, i, j = 1024, 1024, 3, 3, 2, 2
    sizes = dict(n=n, m=m, o=o, p=p, i=i, j=j)
    output = ("o", "p")
    info = optimize(NTK_INPUTS, output, sizes, "optimal")
    per_side = 2 * n * o * j * i
    final = 2 * o * p * i * j
    assert info.cost.flops == 2 * per_side + final == 49224
    # the runner-up: c1.x1 -> [o,j,i], then with x2 -> [o,j,m], then with c2: 86016;
    # x1.x2 over i first costs 2*n*m*i = 4194304 on its own
    assert info.cost.flops < per_side + 2 * o * j * i * m + 2 * o * j * m * p
    got = canonical_steps(info.steps)
    want = canonical_steps(
        [
            ("noj", "ni", "oji", per_side),
            ("mpj", "mi", "pji", per_side),
            ("oji", "pji", "op", final),
        ]
    )
    assert got == want
    assert info.tree in (((0, 1), (2, 3)), ((2, 3), (0, 1)))
    assert tuple(info.steps[-1][2]) == output


# --------------------------------------------------------------------------------------------
# 3. never worse than opt_einsum


@pytest.mark.parametrize("seed", range(20))
def test_optimal_never_worse_than_opt_einsum(seed):
    n_ops = 3 + seed % 5  # 3..7 operands
    inputs, output, sizes = random_network(seed, n_ops)
    info = optimize(inputs, output, sizes, "optimal")
    check_path_valid(info, n_ops)
    # ntkc's own accounting of its path agrees with an independent evaluation
    assert linear_path_cost(inputs, output, sizes, info.path).flops == info.cost.flops
    dp = optimize(inputs, output, sizes, "opt_einsum-dp")
    assert info.cost.flops <= dp.cost.flops
    for kind in ("auto", "greedy", "optimal"):
        theirs = linear_path_cost(inputs, output, sizes, opt_einsum_path(inputs, output, sizes, kind))
        assert info.cost.flops <= theirs.flops, (kind, info, theirs)


# --------------------------------------------------------------------------------------------
# 4. every optimiser gives the same numbers


NUMERIC_NETWORKS = [(100 + s, 2 + s % 5) for s in range(6)]  # (seed, operands): 2..6


@pytest.mark.parametrize("seed,n_ops", NUMERIC_NETWORKS)
def test_every_optimizer_matches_numpy(seed, n_ops):
    inputs, output, sizes = random_network(seed, n_ops, max_size=3, n_pool=6)
    arrays = arrays_for(inputs, sizes, seed)
    want = einsum_np(inputs, output, arrays)
    for name in sorted(OPTIMIZERS):
        info = optimize(inputs, output, sizes, name)
        check_path_valid(info, n_ops)
        got = einsum_jnp(inputs, output, arrays, info.path)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=name)


def test_every_optimizer_costs_at_least_optimal():
    inputs, output, sizes = random_network(7, 6)
    best = optimize(inputs, output, sizes, "optimal").cost.flops
    for name in OPTIMIZERS:
        assert optimize(inputs, output, sizes, name).cost.flops >= best, name


# --------------------------------------------------------------------------------------------
# 5. memory_limit

# A(3x2) B(2x3) C(3x10): (AB)C costs 36 + 180 = 216 FLOPs, its last step holds 9 + 30 + 30 = 69
# elements; A(BC) costs 120 + 120 = 240 FLOPs, each step holds 56 elements.
CHAIN = [("a", "b"), ("b", "c"), ("c", "d")]
CHAIN_SIZES = {"a": 3, "b": 2, "c": 3, "d": 10}


def test_memory_limit_changes_optimal_order():
    free = optimize(CHAIN, ("a", "d"), CHAIN_SIZES, "optimal", itemsize=8)
    assert free.tree == ((0, 1), 2) and free.cost.flops == 216 and free.cost.peak == 69 * 8
    limit = 56 * 8
    info = optimize(CHAIN, ("a", "d"), CHAIN_SIZES, "optimal", memory_limit=limit, itemsize=8)
    assert info.cost.peak <= limit
    assert info.tree == (0, (1, 2)) and info.cost.flops == 240
    assert all(c.peak <= limit for *_, c in info.steps)
    # a limit the free order already meets changes nothing
    same = optimize(CHAIN, ("a", "d"), CHAIN_SIZES, "optimal", memory_limit=69 * 8, itemsize=8)
    assert same.tree == free.tree and same.cost == free.cost
    # the limit is in bytes: the same limit with a smaller itemsize admits the free order
    small = optimize(CHAIN, ("a", "d"), CHAIN_SIZES, "optimal", memory_limit=limit, itemsize=4)
    assert small.tree == free.tree


@pytest.mark.parametrize("method", ["optimal", "greedy"])
@pytest.mark.parametrize("limit", [55 * 8, 8])
def test_impossible_memory_limit_raises(method, limit):
    with pytest.raises(PathMemoryError, match="memory_limit"):
        optimize(CHAIN, ("a", "d"), CHAIN_SIZES, method, memory_limit=limit, itemsize=8)
    assert issubclass(PathMemoryError, ValueError)


@pytest.mark.parametrize("method", sorted(OPTIMIZERS))
@pytest.mark.parametrize("limit", [56 * 8, 8])
def test_every_optimizer_honours_memory_limit(method, limit):
    """Each optimiser either keeps every step within the limit or raises PathMemoryError."""
    try:
        info = optimize(CHAIN, ("a", "d"), CHAIN_SIZES, method, memory_limit=limit, itemsize=8)
    except PathMemoryError as e:
        assert "memory_limit" in str(e)
        # Only the exhaustive search must find a feasible order; heuristics may miss one.
        assert limit < 56 * 8 or method != "optimal"
        return
    assert info.cost.peak <= limit
    assert all(c.peak <= limit for *_, c in info.steps)


def test_greedy_respects_memory_limit():
    inputs, output, sizes = random_network(3, 6)
    free = optimize(inputs, output, sizes, "greedy")
    limit = free.cost.peak
    info = optimize(inputs, output, sizes, "greedy", memory_limit=limit)
    assert info.cost.peak <= limit
    assert all(c.peak <= limit for *_, c in info.steps)


# --------------------------------------------------------------------------------------------
# 6. names, "auto", one operand


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError) as e:
        optimize(CHAIN, ("a", "d"), CHAIN_SIZES, "no-such-optimizer")
    msg = str(e.value)
    assert "no-such-optimizer" in msg
    for name in OPTIMIZERS:
        assert name in msg
    assert {"optimal", "greedy", "opt_einsum-dp", "opt_einsum-branch-2", "opt_einsum-random-greedy"} <= set(OPTIMIZERS)


def _spy(monkeypatch):
    calls = []
    for name, fn in list(OPTIMIZERS.items()):
        def wrapped(*args, _fn=fn, _name=name, **kw):
            calls.append(_name)
            return _fn(*args, **kw)

        monkeypatch.setitem(OPTIMIZERS, name, wrapped)
    return calls


def _chain(n_ops):
    labels = string.ascii_lowercase[: n_ops + 1]
    inputs = [(labels[k], labels[k + 1]) for k in range(n_ops)]
    sizes = {l: 2 + (k * 5) % 4 for k, l in enumerate(labels)}
    return inputs, (labels[0], labels[-1]), sizes


@pytest.mark.parametrize("n_ops,expected", [(OPTIMAL_MAX_OPERANDS, "optimal"), (OPTIMAL_MAX_OPERANDS + 1, "greedy")])
def test_auto_method(monkeypatch, n_ops, expected):
    inputs, output, sizes = _chain(n_ops)
    calls = _spy(monkeypatch)
    info = optimize(inputs, output, sizes)  # method="auto" by default
    assert calls == [expected]
    check_path_valid(info, n_ops)
    assert info.tree == optimize(inputs, output, sizes, expected).tree
    arrays = arrays_for(inputs, sizes, n_ops)
    np.testing.assert_allclose(
        einsum_jnp(inputs, output, arrays, info.path), einsum_np(inputs, output, arrays), rtol=1e-10
    )


def test_single_operand_empty_path():
    sizes = {"i": 3, "j": 4}
    for method in ("auto", "optimal", "greedy"):
        info = optimize([("i", "j")], ("j",), sizes, method)
        assert info.path == () and info.steps == ()
        assert info.cost == info.naive
    arrays = arrays_for([("i", "j")], sizes)
    np.testing.assert_allclose(
        einsum_jnp([("i", "j")], ("j",), arrays, ()), arrays[0].sum(0), rtol=1e-12
    )


# --------------------------------------------------------------------------------------------
# 7. reprs


def test_pathinfo_repr():
    inputs = [("a", "b"), ("b", "c"), ("c", "d")]
    sizes = {"a": 10, "b": 100, "c": 5, "d": 50}
    info = optimize(inputs, ("a", "d"), sizes, "optimal")
    r = repr(info)
    assert f"{info.cost.flops:.3g}" in r and "1.5e+04" in r
    assert f"naive {info.naive.flops:.3g}" in r and "5e+05" in r
    assert "2 steps" in r
    # one line per step, naming its labels
    assert len(r.splitlines()) == 1 + len(info.steps)
    assert "('a', 'b') x ('b', 'c') -> ('a', 'c')" in r


# --------------------------------------------------------------------------------------------
# 8. x2 is x1: mirrored operands

# A weight's term traced over the outputs ``o``: cotangent (n, o, t, c) and input (n, t, k) per
# side, x2's operands (2, 3) the arrays of x1's (0, 1). Per side the weight gradient costs
# 2·N·O·T·K·C; meeting the sides first (X1·X2 over k, G1·G2 over o and c) costs 2·N²·T²·(K+O·C).
MIRRORED = [("n", "o", "t", "c"), ("n", "t", "k"), ("m", "o", "u", "c"), ("m", "u", "k")]
MIRROR = {2: 0, 3: 1}


def mirrored_sizes(n=2, o=4, t=16, c=16, k=32):
    return {"n": n, "m": n, "o": o, "t": t, "u": t, "c": c, "k": k}


def test_mirror_makes_repeated_weight_gradient_free():
    sizes = mirrored_sizes()
    plain = optimize(MIRRORED, ("n", "m"), sizes, "optimal")
    shared = optimize(MIRRORED, ("n", "m"), sizes, "optimal", mirror=MIRROR)
    assert plain.tree == ((0, 2), (1, 3)) and plain.repeated_flops == 0
    assert shared.tree == ((0, 1), (2, 3))  # each side's weight gradient, then their product
    gradient = 2 * 2 * 4 * 16 * 32 * 16
    assert shared.repeated_flops == gradient  # x2's weight gradient is x1's
    assert shared.cost.flops - shared.repeated_flops < plain.cost.flops
    # counted alone, the shared order is the dearer one: the search had to know
    assert shared.cost.flops > plain.cost.flops
    assert "repeated on the same arrays" in repr(shared)


def test_mirror_keeps_the_order_when_sharing_does_not_pay():
    sizes = mirrored_sizes(t=64, k=4)  # many positions, few input features: meet first
    plain = optimize(MIRRORED, ("n", "m"), sizes, "optimal")
    shared = optimize(MIRRORED, ("n", "m"), sizes, "optimal", mirror=MIRROR)
    assert shared.tree == plain.tree and shared.cost == plain.cost


@pytest.mark.parametrize("method", ["optimal", "greedy", "opt_einsum-dp"])
def test_mirror_order_matches_numpy(method):
    sizes = mirrored_sizes(n=2, o=3, t=5, c=4, k=6)
    info = optimize(MIRRORED, ("n", "m"), sizes, method, mirror=MIRROR)
    arrays = arrays_for(MIRRORED, sizes)
    arrays[2], arrays[3] = arrays[0], arrays[1]
    want = np.einsum("notc,ntk,mouc,muk->nm", *arrays)
    np.testing.assert_allclose(einsum_jnp(MIRRORED, ("n", "m"), arrays, info.path), want,
                               rtol=1e-10)


def test_only_a_mirror_in_the_same_order_repeats():
    assert _repeated_steps(((0, 1), (2, 3)), MIRROR) == [False, True, False]
    assert _repeated_steps(((2, 3), (0, 1)), MIRROR) == [True, False, False]  # either comes first
    assert _repeated_steps(((0, 1), (3, 2)), MIRROR) == [False, False, False]  # operands swapped
    assert _repeated_steps(((0, 2), (1, 3)), MIRROR) == [False, False, False]  # sides meet
    three = {2: 0, 3: 1, 5: 4}
    assert _repeated_steps((((0, 1), 4), ((2, 3), 5)), three) == [False, False, True, True, False]
    assert _repeated_steps((((0, 1), 4), ((2, 3), 6)), three) == [False, False, True, False, False]


def test_mirror_honours_memory_limit():
    sizes = mirrored_sizes()
    shared = optimize(MIRRORED, ("n", "m"), sizes, "optimal", mirror=MIRROR)
    limit = int(shared.cost.peak) - 1  # the shared order's largest step no longer fits
    info = optimize(MIRRORED, ("n", "m"), sizes, "optimal", memory_limit=limit, mirror=MIRROR)
    assert info.cost.peak <= limit and info.tree != shared.tree
