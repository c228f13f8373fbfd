"""ntkc: the finite-width empirical Neural Tangent Kernel of any JAX function, compiled."""

from ntkc._api import METHODS, NtkImplementation, empirical_ntk_fn, ntk_fn
from ntkc import testing

__version__ = "0.1.0"

__all__ = ["METHODS", "NtkImplementation", "empirical_ntk_fn", "ntk_fn", "testing"]
