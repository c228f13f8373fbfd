"""The rule table, filled at import by one module per family."""

from ntkc.rules import elementwise, guarded, linear, linear_forms, structural  # noqa: F401  (registration)
from ntkc.rules.registry import (Rule, apply_linear, dense_forms, flops_rule, is_chain, lookup,
                                 per_example_gradient_factor, register, registered,
                                 selections_disjoint, unregister)

__all__ = ["Rule", "apply_linear", "dense_forms", "flops_rule", "is_chain", "lookup",
           "per_example_gradient_factor", "register", "registered", "selections_disjoint",
           "unregister"]
