"""ntkc: the finite-width empirical Neural Tangent Kernel of any JAX function, compiled."""

from ntkc import testing
from ntkc._args import FlaxCollectionsWarning
from ntkc._api import KernelFunction, NtkImplementation, empirical_ntk_fn, ntk_fn, plan
from ntkc._compile import Compiled, compile, load
from ntkc._gram import gram
from ntkc.gram_store import GramArray, open_gram
from ntkc._matfree import kernel_solve, ntk_vp_fn
from ntkc import predict
from ntkc.empirical import empirical_kernel_fn, empirical_nngp_fn
from ntkc.taylor import linearize, taylor_expand
from ntkc.pntk import pseudo_ntk_fn
from ntkc.spectrum import condition_number, ntk_eigenvalues
from ntkc.ir import Form, OneHot, Plan, Split, Term
from ntkc.methods import registry as _methods
from ntkc.passes.cost import Cost
from ntkc.passes.evaluate import UnsupportedPrimitiveError
from ntkc.passes.path import PathMemoryError
from ntkc.rules.registry import register_call, register_rule

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Compiled",
    "Cost",
    "FlaxCollectionsWarning",
    "GramArray",
    "Form",
    "KernelFunction",
    "NtkImplementation",
    "OneHot",
    "PathMemoryError",
    "Plan",
    "Split",
    "Term",
    "UnsupportedPrimitiveError",
    "compile",
    "empirical_ntk_fn",
    "gram",
    "kernel_solve",
    "load",
    "ntk_fn",
    "ntk_vp_fn",
    "open_gram",
    "plan",
    "register_call",
    "register_rule",
    "testing",
    "condition_number",
    "empirical_kernel_fn",
    "empirical_nngp_fn",
    "linearize",
    "ntk_eigenvalues",
    "predict",
    "pseudo_ntk_fn",
    "taylor_expand",
]


def __getattr__(name):
    # ntkc.METHODS, the names method= accepts, is read from the method registry on each access,
    # so that it lists a method registered after import too.
    if name == "METHODS":
        return _methods.names()
    raise AttributeError(f"module 'ntkc' has no attribute {name!r}")
