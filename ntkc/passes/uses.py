"""Find every place where a parameter tangent enters the linear map.

Classifies the equations of a linearized jaxpr (see ``ntkc.trace``):

* primal: no tangent input; residual computations (activations, masks, remat recomputation);
* chain: a structure-only op (transpose, reshape, convert, ...) applied to a parameter value alone;
* use: a tangent equation with a parameter value among its operands (one Use per such operand);
* downstream: every other tangent equation, the linear map from the uses to the outputs.
"""

from __future__ import annotations

import dataclasses

from ntkc._compat import Literal
from ntkc.ir import Chain, Use
from ntkc.rules import is_chain
from ntkc.trace import Traced



@dataclasses.dataclass(frozen=True)
class Analysis:
    """The classified jaxpr.

    Attributes:
      traced: the linearized jaxpr.
      tangent: the set of equation indices that depend on a parameter tangent.
      chain_eqns: equation indices folded into chains.
      chains: per var that holds a parameter value, its Chain.
      uses: every Use, in equation order.
      uses_by_eqn: equation index -> indices into ``uses``.
    """

    traced: Traced
    tangent: frozenset
    chain_eqns: frozenset
    chains: dict
    uses: tuple
    uses_by_eqn: dict

    def uses_of_leaf(self, leaf: int) -> list[int]:
        return [i for i, u in enumerate(self.uses) if u.chain.leaf == leaf]


def _is_float(v) -> bool:
    import jax.numpy as jnp

    return jnp.issubdtype(v.aval.dtype, jnp.inexact)


def find_uses(traced: Traced) -> Analysis:
    jaxpr = traced.jaxpr.jaxpr
    chains = {v: Chain(i) for i, v in enumerate(traced.tangent_vars)}
    tangent_vars = set(traced.tangent_vars)
    tangent, chain_eqns, uses, by_eqn = set(), set(), [], {}
    for k, eqn in enumerate(jaxpr.eqns):
        ins = [v for v in eqn.invars if not isinstance(v, Literal)]
        if not any(v in tangent_vars for v in ins):
            continue
        tangent.add(k)
        tangent_vars.update(eqn.outvars)
        chained = [i for i, v in enumerate(eqn.invars) if not isinstance(v, Literal) and v in chains]
        if (
            is_chain(eqn.primitive)  # a bijection (see ntkc.rules.registry.register_chain)
            and chained == [0]
            and len(eqn.outvars) == 1
            and _is_float(eqn.outvars[0])
        ):
            c = chains[eqn.invars[0]]
            chains[eqn.outvars[0]] = Chain(c.leaf, c.eqns + (eqn,))
            chain_eqns.add(k)
            continue
        for i in chained:
            by_eqn.setdefault(k, []).append(len(uses))
            uses.append(Use(k, i, chains[eqn.invars[i]], eqn.primitive.name))
    for i, v in enumerate(jaxpr.outvars):
        if not isinstance(v, Literal) and v in chains:
            uses.append(Use(None, i, chains[v], "output"))
    return Analysis(traced, frozenset(tangent), frozenset(chain_eqns), chains, tuple(uses), by_eqn)
