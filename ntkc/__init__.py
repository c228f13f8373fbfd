"""ntkc: the finite-width empirical Neural Tangent Kernel of any JAX function, compiled."""

from ntkc._api import METHODS, KernelFunction, NtkImplementation, empirical_ntk_fn, ntk_fn, plan
from ntkc._compile import Compiled, compile, load
from ntkc.ir import Plan, Term
from ntkc.ir import Form, OneHot
from ntkc.rules.registry import register_rule
from ntkc.passes.cost import Cost
from ntkc.passes.path import PathMemoryError
from ntkc import testing
from ntkc.passes.emit import UnsupportedPrimitiveError

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Compiled",
    "Cost",
    "Form",
    "KernelFunction",
    "NtkImplementation",
    "OneHot",
    "PathMemoryError",
    "Plan",
    "Term",
    "UnsupportedPrimitiveError",
    "compile",
    "empirical_ntk_fn",
    "load",
    "ntk_fn",
    "plan",
    "register_rule",
    "testing",
]
