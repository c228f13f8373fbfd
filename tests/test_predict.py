"""ntkc.predict against closed forms (scipy's expm, dense solves) and against actually training
the linearized network by gradient descent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import ntkc
from ntkc import predict

R = np.random.default_rng(0)
PARAMS = {"w": R.standard_normal((3, 16)) / np.sqrt(3), "v": R.standard_normal((16, 2)) / 4}
X_TRAIN, X_TEST = R.standard_normal((6, 3)), R.standard_normal((4, 3))
Y_TRAIN = R.standard_normal((6, 2))


def net(p, x):
    return jnp.tanh(x @ p["w"]) @ p["v"]


def full(x1, x2):
    """Θ(x1, x2) with trace_axes=(): (N1, N2, O, O), float64 reference."""
    return ntkc.testing.reference_ntk(net, x1, x2, PARAMS, trace_axes=())


def square(k):
    return np.transpose(k, (0, 2, 1, 3)).reshape(k.shape[0] * k.shape[2], -1)


K_DD, K_TD = full(X_TRAIN, None), full(X_TEST, X_TRAIN)
F_TRAIN, F_TEST = np.asarray(net(PARAMS, X_TRAIN)), np.asarray(net(PARAMS, X_TEST))


def closed_form(t, k_dd=K_DD, k_td=K_TD, lr=1.0):
    """f_t on train and test by scipy's expm and a dense solve (flattened (N·O) vectors)."""
    theta, cross = square(k_dd), square(k_td)
    decay = scipy.linalg.expm(-lr * t * theta / Y_TRAIN.size) - np.eye(len(theta))
    err = (F_TRAIN - Y_TRAIN).reshape(-1)
    train = F_TRAIN.reshape(-1) + decay @ err
    test = F_TEST.reshape(-1) + cross @ np.linalg.solve(theta, decay @ err)
    return train.reshape(F_TRAIN.shape), test.reshape(F_TEST.shape)


@pytest.mark.quick
def test_mse_closed_form_matches_expm_at_several_times():
    predict_fn = predict.gradient_descent_mse(K_DD, Y_TRAIN, learning_rate=0.5, trace_axes=())
    ts = np.array([[0.0, 3.0], [40.0, 500.0]])
    train, test = predict_fn(ts, F_TRAIN, F_TEST, K_TD)
    assert train.shape == (2, 2, 6, 2) and test.shape == (2, 2, 4, 2)
    for i, j in np.ndindex(2, 2):
        want_train, want_test = closed_form(ts[i, j], lr=0.5)
        np.testing.assert_allclose(np.asarray(train[i, j]), want_train, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(np.asarray(test[i, j]), want_test, rtol=1e-8, atol=1e-10)
    # return conventions: train only, test only
    np.testing.assert_allclose(np.asarray(predict_fn(3.0, F_TRAIN)), closed_form(3.0, lr=0.5)[0],
                               rtol=1e-8)
    only_test = predict_fn(3.0, None, F_TEST, K_TD)
    assert only_test.shape == (4, 2)


def test_infinite_time_is_the_kernel_regression():
    predict_fn = predict.gradient_descent_mse(K_DD, Y_TRAIN, trace_axes=())
    train, test = predict_fn(None, F_TRAIN, F_TEST, K_TD)
    np.testing.assert_allclose(np.asarray(train), Y_TRAIN, rtol=1e-14)
    want = F_TEST.reshape(-1) + square(K_TD) @ np.linalg.solve(square(K_DD),
                                                               (Y_TRAIN - F_TRAIN).reshape(-1))
    np.testing.assert_allclose(np.asarray(test), want.reshape(4, 2), rtol=1e-8)
    late = predict_fn(1e7, F_TRAIN, F_TEST, K_TD)
    np.testing.assert_allclose(np.asarray(late[1]), np.asarray(test), rtol=1e-6)


def test_traced_kernel_is_read_as_theta_kron_identity_with_diag_reg():
    k_dd, k_td = np.mean(np.diagonal(K_DD, 0, 2, 3), -1), np.mean(np.diagonal(K_TD, 0, 2, 3), -1)
    kron = lambda k: np.einsum("ab,ij->abij", k, np.eye(2))
    traced = predict.gradient_descent_mse(k_dd, Y_TRAIN, diag_reg=0.1)
    untraced = predict.gradient_descent_mse(kron(k_dd), Y_TRAIN, diag_reg=0.1, trace_axes=())
    for t in (2.0, None):
        a = traced(t, F_TRAIN, F_TEST, k_td)
        b = untraced(t, F_TRAIN, F_TEST, kron(k_td))
        for u, v in zip(a, b):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-9, atol=1e-12)


def test_predictions_match_training_the_linearized_network():
    """Plain small-step gradient descent on f_lin's MSE, recorded at several steps."""
    lr, steps = 0.02, (0, 500, 2500, 7500)
    f_lin = ntkc.linearize(net, PARAMS)
    loss = lambda p: 0.5 * jnp.mean((f_lin(p, X_TRAIN) - Y_TRAIN) ** 2)

    @jax.jit
    def run(p, n):
        step = lambda _, q: jax.tree.map(lambda a, g: a - lr * g, q, jax.grad(loss)(q))
        return jax.lax.fori_loop(0, n, step, p)

    kernel_fn = ntkc.ntk_fn(net, trace_axes=(), vmap_axes=0)
    k_dd, k_td = kernel_fn(X_TRAIN, None, PARAMS), kernel_fn(X_TEST, X_TRAIN, PARAMS)
    predict_fn = predict.gradient_descent_mse(k_dd, Y_TRAIN, learning_rate=lr, trace_axes=())
    pred_train, pred_test = predict_fn(np.array(steps, float), F_TRAIN, F_TEST, k_td)
    p, done = PARAMS, 0
    for i, s in enumerate(steps):
        p, done = run(p, s - done), s
        np.testing.assert_allclose(np.asarray(f_lin(p, X_TRAIN)), np.asarray(pred_train[i]),
                                   atol=1.5e-3)
        np.testing.assert_allclose(np.asarray(f_lin(p, X_TEST)), np.asarray(pred_test[i]),
                                   atol=1.5e-3)
    assert float(jnp.abs(pred_train[-1] - pred_train[0]).max()) > 0.1  # it did move


def test_ode_gradient_descent_matches_the_mse_closed_form():
    mse = lambda f, y: 0.5 * jnp.mean((f - y) ** 2)
    ts = np.array([0.0, 5.0, 60.0])
    ode = predict.gradient_descent(mse, K_DD, Y_TRAIN, learning_rate=0.5, trace_axes=())
    exact = predict.gradient_descent_mse(K_DD, Y_TRAIN, learning_rate=0.5, trace_axes=())
    for a, b in zip(ode(ts, F_TRAIN, F_TEST, K_TD), exact(ts, F_TRAIN, F_TEST, K_TD)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    state = ode(ts, predict.ODEState(F_TRAIN, F_TEST), None, K_TD)
    assert isinstance(state, predict.ODEState) and state.fx_test.shape == (3, 4, 2)
    with pytest.raises(ValueError, match="infinite"):
        ode(None, F_TRAIN)


def test_ode_momentum_matches_the_linear_second_order_system():
    """With MSE the heavy-ball flow is linear: z' = A z, z = (f - y, q), solved by expm."""
    lr, m, t = 0.5, 0.9, 7.0
    mse = lambda f, y: 0.5 * jnp.mean((f - y) ** 2)
    got = predict.gradient_descent(mse, K_DD, Y_TRAIN, lr, momentum=m, trace_axes=())(t, F_TRAIN)
    theta, n = square(K_DD), Y_TRAIN.size
    friction, eye = (m - 1) / np.sqrt(lr), np.eye(len(theta))
    a = np.block([[0 * eye, eye], [-theta / n, friction * eye]])
    z0 = np.concatenate([(F_TRAIN - Y_TRAIN).reshape(-1), np.zeros(n)])
    z = scipy.linalg.expm(a * t * np.sqrt(lr)) @ z0
    np.testing.assert_allclose(np.asarray(got), z[:n].reshape(6, 2) + Y_TRAIN, rtol=1e-6, atol=1e-7)


def test_gp_inference_means_and_covariances():
    nngp = lambda x1, x2: np.einsum("ai,bi->ab", net(PARAMS, x1), net(PARAMS, x2)) / 2
    both = ntkc.empirical_kernel_fn(net)(np.concatenate([X_TRAIN, X_TEST]), None, None, PARAMS)
    block = lambda rows, cols: type(both)(*(k[rows][:, cols] for k in both))
    train, test = slice(0, 6), slice(6, 10)
    k_train, k_cross, k_test = block(train, train), block(test, train), block(test, test)
    np.testing.assert_allclose(np.asarray(k_train.nngp), nngp(X_TRAIN, X_TRAIN), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(k_cross.ntk), np.mean(np.diagonal(K_TD, 0, 2, 3), -1),
                               rtol=1e-10)
    t_dd, t_td, t_tt = (np.asarray(k.ntk) for k in (k_train, k_cross, k_test))
    n_dd, n_td, n_tt = (np.asarray(k.nngp) + 0.0 for k in (k_train, k_cross, k_test))
    n_dd = n_dd + 0.5 * np.eye(6)          # the empirical NNGP has rank O: make it invertible
    k_train = k_train._replace(nngp=n_dd)
    post = predict.gp_inference(k_train, Y_TRAIN)(None, k_cross, k_test)
    assert post._fields == ("nngp", "ntk")
    np.testing.assert_allclose(np.asarray(post.nngp.mean), n_td @ np.linalg.solve(n_dd, Y_TRAIN),
                               rtol=1e-8)
    np.testing.assert_allclose(np.asarray(post.nngp.covariance),
                               n_tt - n_td @ np.linalg.solve(n_dd, n_td.T), rtol=1e-8, atol=1e-10)
    a = np.linalg.solve(t_dd, t_td.T)
    cov = n_tt + a.T @ n_dd @ a - t_td @ np.linalg.solve(t_dd, n_td.T)
    cov -= (t_td @ np.linalg.solve(t_dd, n_td.T)).T
    np.testing.assert_allclose(np.asarray(post.ntk.covariance), cov, rtol=1e-7, atol=1e-9)
    ntk_mean = predict.gradient_descent_mse(t_dd, Y_TRAIN)(None, None, 0.0, t_td)
    np.testing.assert_allclose(np.asarray(post.ntk.mean), np.asarray(ntk_mean), rtol=1e-8)
    gp = predict.gp_inference(t_dd, Y_TRAIN)("ntkgp", t_td, t_tt)
    np.testing.assert_allclose(np.asarray(gp.covariance),
                               t_tt - t_td @ np.linalg.solve(t_dd, t_td.T), rtol=1e-7, atol=1e-9)
    train = predict.gp_inference(t_dd, Y_TRAIN)(("ntk",), None, True)
    np.testing.assert_allclose(np.asarray(train.ntk.mean), Y_TRAIN)
    with pytest.raises(ValueError, match="nngp"):
        predict.gp_inference(k_train._replace(nngp=None), Y_TRAIN)("ntk", k_cross, k_test)
    with pytest.raises(ValueError, match="get"):
        predict.gp_inference(t_dd, Y_TRAIN)("gp", t_td)
    with pytest.raises(TypeError, match="get"):
        predict.gp_inference(t_dd, Y_TRAIN)(7, t_td)


def test_max_learning_rate_is_the_stability_edge():
    theta = square(K_DD)
    lr = predict.max_learning_rate(K_DD)
    np.testing.assert_allclose(lr, 2 * 12 / np.linalg.eigvalsh(theta)[-1], rtol=1e-10)
    radius = lambda eta: np.abs(np.linalg.eigvals(np.eye(12) - eta * theta / 12)).max()
    assert radius(0.99 * lr) < 1 < radius(1.01 * lr)
    assert predict.max_learning_rate(K_DD, momentum=0.5) == pytest.approx(1.5 * lr)


def test_bad_inputs_are_named():
    predict_fn = predict.gradient_descent_mse(K_DD, Y_TRAIN, trace_axes=())
    with pytest.raises(ValueError, match="k_test_train"):
        predict_fn(1.0, F_TRAIN, F_TEST)
    with pytest.raises(ValueError, match="k_train_train"):
        predict.gradient_descent_mse(K_DD, Y_TRAIN)            # traced y, untraced kernel
    with pytest.raises(ValueError, match="diag_reg"):
        predict.gradient_descent_mse(K_DD, Y_TRAIN, diag_reg=-1.0, trace_axes=())
