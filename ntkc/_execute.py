"""Execution: the kernel of one planned call, inside ``jit``.

``compute`` builds the :class:`~ntkc._problem.Problem` (the arrays) for a planned
:class:`~ntkc._problem.Config` and runs its method's kernel program (for the structured method,
the schedule the planner made: ``Config.schedule``); ``finish`` lays the result out as the call
returns it.
"""

from __future__ import annotations

import jax

from ntkc._args import read_keys
from ntkc._problem import Config, Problem, merge_kwargs
from ntkc.methods import registry


def compute(f, x1, x2, params, dyn1, dyn2, config: Config):
    kwargs1 = merge_kwargs(config.static_kwargs1, dyn1)
    kwargs2 = merge_kwargs(config.static_kwargs2, dyn2)
    if config.read_rng and kwargs1.get("rng") is not None:
        key1, key2 = read_keys(kwargs1["rng"], kwargs2["rng"], config.read_rng == "pair", x1, x2)
        kwargs1, kwargs2 = {**kwargs1, "rng": key1}, {**kwargs2, "rng": key2}
    prob = Problem(f, x1, x1 if config.x2_is_x1 else x2, params, kwargs1, kwargs2, config)
    return finish(registry.get(config.method).kernel(prob), params, config)


def finish(leaves: list, params, config: Config):
    """A method's kernel per output leaf as the call returns it: one dtype, by parameter leaf
    with ``by_param``, in the layout of f's output pytree."""
    if config.dtypes:  # one dtype whatever the method (jacobian's follows params', others' f's)
        leaves = [jax.tree.map(lambda k, d=d: k.astype(d), leaf)
                  for leaf, d in zip(leaves, config.dtypes)]
    if config.by_param:  # per output leaf, a pytree shaped like params
        param_def = jax.tree.structure(params)
        leaves = [jax.tree_util.tree_unflatten(param_def, per_leaf) for per_leaf in leaves]
    return jax.tree_util.tree_unflatten(config.out_treedef, leaves)
