"""The methods that compute an NTK: one module each, registered in ``registry.METHODS`` when
imported here, in the order ``method="auto"`` tries them."""

from ntkc.methods import structured, jacobian, ntvp, mixed  # noqa: F401  (they register)
