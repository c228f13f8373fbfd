"""One step of a contraction path: two operands contracted into the labels still needed.

A step whose result is small and whose contraction is long (x2=None's Gram of a weight gradient
with itself: ``[N·O, K] x [N·O, K]ᵀ`` with K the weight's size, up to 589,824 on ResNet-18) runs
as one matrix product of K-major operands, ``[K, A]ᵀ [K, B]``: XLA:CPU runs the layout that
``jnp.einsum`` leaves it (``[A, K] [K, B]``, with a copy per operand) 2.5-3.4x slower, and the
programs with such Grams take 0.89-0.91x the time this way (ResNet-18, ResNet-50, WRN-28-10 with
x2=None; ``bench/results/long-gram-s12.log``). The reshape to ``[K, A]`` makes the K-major copy
explicit (one copy where both operands are the same array), which XLA does not fold into the dot.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# A step whose result has at most SMALL_RESULT entries, at least MIN_SIDE rows and columns (a
# matrix, not the vector or scalar of a traced Gram, which XLA reduces as fast without the
# copies) and whose contraction is at least LONG_CONTRACTION long runs as a K-major matrix
# product. Measured on ResNet-18 (bench/results/long-gram-s12.log): x2=None's Grams of K =
# 294,912-589,824 gain; the cross kernel's K <= 147,456 steps and a traced Gram (O = 128 rows
# contracted with the weight) do not.
SMALL_RESULT = 2**14
MIN_SIDE = 16
LONG_CONTRACTION = 2**18


def is_long(a_labels, b_labels, kept, sizes) -> bool:
    """Whether contracting two operands into ``kept`` is a long contraction with a small result
    and no batch or summed-alone labels (a plain matrix product after reshapes)."""
    a, b, kept = list(a_labels), list(b_labels), set(kept)
    shared = set(a) & set(b)
    if shared & kept or any(l not in kept and l not in shared for l in a + b):
        return False
    if len(set(a)) != len(a) or len(set(b)) != len(b):  # a repeated label: a diagonal
        return False
    rows, cols = (math.prod(sizes[l] for l in x if l in kept) for x in (a, b))
    return (MIN_SIDE <= min(rows, cols) and rows * cols <= SMALL_RESULT
            and math.prod(sizes[l] for l in shared) >= LONG_CONTRACTION)


def contract_pair(a, a_labels, b, b_labels, kept) -> jnp.ndarray:
    """``einsum(a, b) -> kept``, as a K-major matrix product where :func:`is_long`."""
    a_labels, b_labels, kept = list(a_labels), list(b_labels), list(kept)
    sizes = dict(zip(a_labels, a.shape)) | dict(zip(b_labels, b.shape))
    if not is_long(a_labels, b_labels, kept, sizes):
        return jnp.einsum(a, a_labels, b, b_labels, kept)
    summed = [l for l in a_labels if l in b_labels]
    free_a = [l for l in a_labels if l not in summed]
    free_b = [l for l in b_labels if l not in summed]
    k = math.prod(sizes[l] for l in summed)
    a2 = jnp.transpose(a, [a_labels.index(l) for l in summed + free_a]).reshape(k, -1)
    b2 = jnp.transpose(b, [b_labels.index(l) for l in summed + free_b]).reshape(k, -1)
    result = jax.lax.dot_general(a2, b2, (((0,), (0,)), ((), ())),
                                 preferred_element_type=jnp.result_type(a, b))
    result = result.reshape([sizes[l] for l in free_a + free_b])
    return jnp.transpose(result, [(free_a + free_b).index(l) for l in kept])


def run_path(ops, out, path) -> jnp.ndarray:
    """``jnp.einsum(*ops, out, optimize=path)``, step by step through :func:`contract_pair`."""
    arrays, labels = list(ops[0::2]), [list(l) for l in ops[1::2]]
    for step in path:
        picked = [(arrays.pop(i), labels.pop(i)) for i in sorted(step, reverse=True)]
        left = {l for ls in labels for l in ls} | set(out)
        kept = list(dict.fromkeys(l for _, ls in picked for l in ls if l in left))
        if len(picked) == 2:
            (b, lb), (a, la) = picked
            result = contract_pair(a, la, b, lb, kept)
        else:
            result = jnp.einsum(*[x for a, ls in picked for x in (a, ls)], kept)
        arrays.append(result)
        labels.append(kept)
    (result,), (have,) = arrays, labels
    return result if have == list(out) else jnp.einsum(result, have, list(out))


def has_long_step(info, sizes) -> bool:
    """Whether a chosen path (``ntkc.passes.path.PathInfo``) has a step :func:`is_long` takes."""
    return any(is_long(a, b, out, sizes) for a, b, out, _ in info.steps)
