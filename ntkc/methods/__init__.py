"""The reference methods: Jacobian contraction and NTK-vector products."""
