"""ntk_vp_fn (Θ V without Θ) and kernel_solve (conjugate gradients) against dense algebra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkc


def net(p, x):
    return {"y": jnp.tanh(x @ p["w"]) @ p["v"], "z": jnp.sin(x @ p["w"])[:, :2]}


R = np.random.default_rng(0)
PARAMS = {"w": R.standard_normal((3, 5)), "v": R.standard_normal((5, 2))}
X1, X2 = R.standard_normal((4, 3)), R.standard_normal((3, 3))


def dense_theta(k1, k2):
    """Θ blocks (N1, O1, N2, O2) between output leaves k1 of f(x1) and k2 of f(x2)."""
    j1 = jax.jacrev(lambda p: net(p, X1)[k1])(PARAMS)
    j2 = jax.jacrev(lambda p: net(p, X2)[k2])(PARAMS)
    return sum(np.einsum("abp,cdp->abcd", a.reshape(a.shape[:2] + (-1,)),
                         b.reshape(b.shape[:2] + (-1,)))
               for a, b in zip(jax.tree.leaves(j1), jax.tree.leaves(j2)))


def test_ntk_vp_matches_the_dense_kernel_on_pytrees_and_probe_batches():
    mvp = ntkc.ntk_vp_fn(net, X1, X2, PARAMS)
    v = {"y": R.standard_normal((3, 2)), "z": R.standard_normal((3, 2))}
    got = mvp(v)
    for k1 in ("y", "z"):
        want = sum(np.einsum("abcd,cd->ab", dense_theta(k1, k2), v[k2]) for k2 in ("y", "z"))
        np.testing.assert_allclose(np.asarray(got[k1]), want, rtol=1e-10, atol=1e-12)
    batch = {k: np.stack([v[k], 2 * v[k]]) for k in v}
    got2 = mvp(batch)
    np.testing.assert_allclose(np.asarray(got2["y"][1]), 2 * np.asarray(got["y"]), rtol=1e-10)


def test_ntk_vp_rejects_a_wrong_shape():
    mvp = ntkc.ntk_vp_fn(net, X1, X2, PARAMS)
    with pytest.raises(ValueError, match="shape"):
        mvp({"y": np.ones((4, 2)), "z": np.ones((3, 2))})


def test_kernel_solve_matches_a_dense_solve():
    f = lambda p, x: net(p, x)["y"]
    theta = np.asarray(ntkc.ntk_fn(f, method="structured")(X1, None, PARAMS))  # (4, 4) traced
    y = R.standard_normal((4, 2))
    alpha = ntkc.kernel_solve(theta, y, ridge=0.1, tol=1e-12)
    np.testing.assert_allclose(np.asarray(alpha), np.linalg.solve(theta + 0.1 * np.eye(4), y),
                               rtol=1e-6, atol=1e-8)


def test_matrix_free_kernel_solve_matches_a_dense_solve():
    f = lambda p, x: net(p, x)["y"]
    mvp = ntkc.ntk_vp_fn(f, X1, None, PARAMS)
    y = R.standard_normal((4, 2))
    alpha = ntkc.kernel_solve(mvp, y, ridge=0.5, tol=1e-12, maxiter=200)
    full = ntkc.ntk_fn(f, (), method="jacobian")(X1, None, PARAMS)  # (4, 4, 2, 2)
    matrix = np.asarray(full).transpose(0, 2, 1, 3).reshape(8, 8) + 0.5 * np.eye(8)
    np.testing.assert_allclose(np.asarray(alpha).reshape(-1), np.linalg.solve(matrix, y.reshape(-1)),
                               rtol=1e-6, atol=1e-8)


def test_kernel_solve_checks_its_arguments():
    with pytest.raises(ValueError, match="ridge"):
        ntkc.kernel_solve(np.eye(3), np.ones(3), ridge=-1.0)
    with pytest.raises(ValueError, match="square"):
        ntkc.kernel_solve(np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match="rows"):
        ntkc.kernel_solve(np.eye(3), np.ones(4))
