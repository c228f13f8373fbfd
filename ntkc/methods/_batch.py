"""Placing the example axis of per-example results where the kernel layout wants it."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ntkc._axes import KernelAxes
from ntkc._problem import Problem


def per_example_jacobians(prob: Problem, side: int) -> list:
    """Per output leaf, the Jacobian pytree (like params) with the example axis at its out axis.

    Each Jacobian leaf has shape ``(*output_leaf_shape, *param_leaf_shape)``, the same layout as a
    whole-batch Jacobian, computed one example at a time (valid because ``vmap_axes`` certifies
    that examples do not interact).
    """
    if prob.batching is None:
        return jax.jacrev(prob.full_fn(side))(prob.params)
    batched, axes = prob.batched_inputs(side)
    jac = jax.vmap(jax.jacrev(prob.example_fn(side)), in_axes=(None, axes))(prob.params, batched)
    return [
        jax.tree.map(lambda j, b=b: jnp.moveaxis(j, 0, b), jk)
        for jk, b in zip(jac, prob.batching.outputs)
    ]


def place_example_axes(kernel, axes: KernelAxes, batch_axis: int, n_example_axes: int):
    """Moves the leading ``n_example_axes`` (1 or 2) of ``kernel`` to ``batch_axis``'s position."""
    positions = axes.kernel_position(batch_axis)
    return jnp.moveaxis(kernel, tuple(range(n_example_axes)), positions)
