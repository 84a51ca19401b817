"""Every layer and the loss against central finite differences in float64, and their PyTorch semantics."""

import numpy as np
import pytest
from conftest import RecordingRng, numeric_grad

from minigan.layers import BatchNorm1d, Dropout, LeakyReLU, Linear, Sigmoid
from minigan.losses import bce_backward, bce_forward

F64 = np.float64


def away_from_zero(rng, shape, margin=0.1):
    """Inputs with |x| >= margin, so a finite difference never straddles LeakyReLU's kink."""
    x = rng.uniform(margin, 2.0, size=shape)
    return x * rng.choice([-1.0, 1.0], size=shape)


def check_layer_gradients(layer, x, rng, rtol=1e-6, atol=1e-8):
    """dL/dx and dL/dparams of L = sum(g * layer(x)) for a random upstream gradient g."""
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g).copy()
    analytic = {k: v.copy() for k, v in layer.grads.items()}

    def loss():
        return float(np.sum(g * layer.forward(x)))

    np.testing.assert_allclose(dx.reshape(-1), numeric_grad(loss, x), rtol=rtol, atol=atol)
    for name, param in layer.params.items():
        np.testing.assert_allclose(analytic[name].reshape(-1), numeric_grad(loss, param), rtol=rtol, atol=atol,
                                   err_msg=f"d{name}")
    return dx


def test_linear_gradients():
    rng = np.random.default_rng(1)
    layer = Linear(7, 5, rng, dtype=F64)
    check_layer_gradients(layer, rng.standard_normal((6, 7)), rng)


def test_linear_init_bound_is_pytorch_default():
    layer = Linear(400, 300, np.random.default_rng(0))
    bound = 1 / np.sqrt(400)
    for p in layer.params.values():
        assert p.dtype == np.float32
        assert np.abs(p).max() <= bound
        assert np.abs(p).max() > 0.95 * bound  # uniform over the whole interval, not a narrower one


def test_leaky_relu_gradients():
    rng = np.random.default_rng(2)
    check_layer_gradients(LeakyReLU(0.2, dtype=F64), away_from_zero(rng, (5, 9)), rng)


def test_leaky_relu_gradient_at_exactly_zero_takes_the_negative_slope():
    layer = LeakyReLU(0.2)
    x = np.array([[0.0, -0.0, 1.0, -1.0]], np.float32)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.array([[0, 0, 1, -0.2]], np.float32))
    dx = layer.backward(np.ones_like(x))
    np.testing.assert_allclose(dx, [[0.2, 0.2, 1.0, 0.2]], rtol=1e-7)


def test_sigmoid_gradients_and_saturation():
    rng = np.random.default_rng(3)
    check_layer_gradients(Sigmoid(dtype=F64), rng.standard_normal((4, 6)) * 3, rng)
    layer = Sigmoid()
    x = np.array([[-1000.0, -120.0, -20.0, 0.0, 20.0, 1000.0]], np.float32)
    y = layer.forward(x)
    assert np.all(np.isfinite(y))
    assert y[0, 0] == 0.0 and y[0, 1] == 0.0  # exact 0, as PyTorch in float32
    assert y[0, 2] > 0  # but not flushed early
    assert y[0, 3] == 0.5 and y[0, -1] == 1.0


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients(training):
    rng = np.random.default_rng(4)
    layer = BatchNorm1d(5, dtype=F64)
    layer.params["gamma"][...] = rng.uniform(0.5, 2, 5)
    layer.params["beta"][...] = rng.standard_normal(5)
    layer.buffers["running_mean"][...] = rng.standard_normal(5)
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2, 5)
    layer.training = training
    x = rng.standard_normal((8, 5)) * 2 + 1
    dx = check_layer_gradients(layer, x, rng)
    if training:
        # a random upstream gradient gives a nonzero input gradient (an all-ones one would give exactly 0)
        assert np.abs(dx).max() > 1e-3


def test_batchnorm_statistics_follow_pytorch():
    rng = np.random.default_rng(5)
    layer = BatchNorm1d(3, dtype=F64)
    x = rng.standard_normal((10, 3)) * 3 + 2
    y = layer.forward(x)
    mu, var = x.mean(0), x.var(0)  # biased variance for normalising
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + 1e-5), rtol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_mean"], 0.1 * mu, rtol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_var"], 0.9 + 0.1 * x.var(0, ddof=1), rtol=1e-12)
    layer.training = False
    x2 = rng.standard_normal((4, 3))
    rm, rv = layer.buffers["running_mean"].copy(), layer.buffers["running_var"].copy()
    np.testing.assert_allclose(layer.forward(x2), (x2 - rm) / np.sqrt(rv + 1e-5), rtol=1e-12)
    np.testing.assert_array_equal(layer.buffers["running_mean"], rm)  # eval mode leaves the buffers alone


def test_batchnorm_trains_on_two_rows_and_refuses_one():
    """Two rows are the fewest with a batch variance (the recipe's last batch may be as small as that)."""
    layer = BatchNorm1d(3, dtype=F64)
    x = np.array([[1.0, -2.0, 5.0], [3.0, 2.0, 5.5]])
    var = x.var(0)
    # each row is one half-range from the mean, the half-range being the biased standard deviation
    np.testing.assert_allclose(layer.forward(x), [[-1.0], [1.0]] * np.sqrt(var / (var + 1e-5)), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2 rows"):
        layer.forward(x[:1])


def test_dropout_refuses_a_probability_outside_0_to_1_and_at_0_is_the_identity_drawing_nothing():
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
            Dropout(p)
    rng = np.random.default_rng(9)
    state = rng.bit_generator.state
    x = np.arange(12.0).reshape(3, 4)
    layer = Dropout(0.0, rng, dtype=F64)
    np.testing.assert_array_equal(layer.forward(x), x)
    np.testing.assert_array_equal(layer.backward(x * 2), x * 2)
    assert rng.bit_generator.state == state  # the run's random stream is the same with p = 0 as without the layer


def test_dropout_gradients_scaling_and_eval_identity():
    rng = np.random.default_rng(6)
    layer = Dropout(0.3, RecordingRng(7, frozen=True), dtype=F64)
    check_layer_gradients(layer, rng.standard_normal((6, 8)), rng)

    layer = Dropout(0.3, np.random.default_rng(8))
    x = np.ones((400, 500), np.float32)
    y = layer.forward(x).copy()  # the layer reuses its output buffer on the next forward
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)  # inverted dropout: survivors scaled by 1/(1-p)
    assert abs(kept.mean() - 0.7) < 0.005  # 200,000 draws: the keep rate is 0.7 to within ~4 sigma
    assert abs(y.mean() - 1.0) < 0.01  # so the expectation is preserved
    y2 = layer.forward(x)
    assert not np.array_equal(y, y2)  # a fresh mask each forward
    layer.training = False
    np.testing.assert_array_equal(layer.forward(x), x)
    np.testing.assert_array_equal(layer.backward(x * 2), x * 2)


def test_bce_gradient_matches_finite_differences():
    rng = np.random.default_rng(9)
    p = rng.uniform(0.05, 0.95, (7, 1))
    t = rng.uniform(0, 1, (7, 1))
    analytic = bce_backward(p, t)
    numeric = numeric_grad(lambda: float(bce_forward(p, t)), p)
    np.testing.assert_allclose(analytic.reshape(-1), numeric, rtol=1e-6)


def test_bce_clamps_like_pytorch():
    p = np.array([[0.0], [1.0], [0.5]], np.float32)
    t = np.array([[1.0], [0.0], [1.0]], np.float32)
    loss = float(bce_forward(p, t))
    np.testing.assert_allclose(loss, (100 + 100 + np.log(2)) / 3, rtol=1e-6)  # logs clamped at -100
    grad = bce_backward(p, t)
    np.testing.assert_allclose(grad[:2, 0], [-1e12 / 3, 1e12 / 3], rtol=1e-6)  # denominator clamped at 1e-12
    assert np.all(np.isfinite(grad))
    # through the sigmoid the saturated gradient is exactly zero: y(1-y) = 0
    sig = Sigmoid()
    y = sig.forward(np.array([[-200.0]], np.float32))
    assert sig.backward(bce_backward(y, 1.0))[0, 0] == 0.0


def test_cross_entropy_gradient_matches_finite_differences():
    from minigan.losses import cross_entropy_backward, cross_entropy_forward

    rng = np.random.default_rng(10)
    z = rng.standard_normal((6, 10)) * 3
    y = rng.integers(0, 10, 6)
    numeric = numeric_grad(lambda: float(cross_entropy_forward(z, y)), z)
    np.testing.assert_allclose(cross_entropy_backward(z, y).reshape(-1), numeric, rtol=1e-6, atol=1e-8)
    # the log-sum-exp form stays finite where a naive softmax would overflow
    big = np.array([[1000.0, 0.0], [0.0, -1000.0]])
    np.testing.assert_allclose(float(cross_entropy_forward(big, np.array([1, 0]))), 500.0, rtol=1e-12)
    np.testing.assert_allclose(cross_entropy_backward(big, np.array([1, 0])), [[0.5, -0.5], [0, 0]], atol=1e-300)
    uniform = np.zeros((4, 10))
    np.testing.assert_allclose(float(cross_entropy_forward(uniform, np.arange(4))), np.log(10), rtol=1e-12)
