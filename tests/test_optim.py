import math

import numpy as np

from minigan.optim import Adam


def test_adam_matches_hand_computed_steps():
    lr, b1, b2, eps = 0.1, 0.5, 0.999, 1e-8
    params = np.array([1.0, -2.0, 0.5])
    grads = np.zeros(3)
    opt = Adam(params, grads, lr, (b1, b2), eps)
    expected = [1.0, -2.0, 0.5]
    m, v = [0.0] * 3, [0.0] * 3
    for t, g in enumerate([[0.3, -1.0, 0.0], [0.1, 2.0, -0.5], [-0.4, 0.2, 1e-3]], start=1):
        grads[...] = g
        opt.step()
        for i in range(3):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            expected[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
        np.testing.assert_allclose(params, expected, rtol=1e-12, atol=1e-15)
    assert opt.t == 3
    # the first step moves every parameter with a nonzero gradient by lr against its gradient's sign
    p2, g2 = np.zeros(2), np.array([1e-3, -5.0])
    o2 = Adam(p2, g2, lr=0.01)
    o2.step()
    np.testing.assert_allclose(p2, [-0.01, 0.01], rtol=1e-4)


def test_adam_state_round_trip():
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(10), np.zeros(10)
    opt = Adam(p, g)
    for _ in range(3):
        g[...] = rng.standard_normal(10)
        opt.step()
    p2 = p.copy()
    opt2 = Adam(p2, g.copy())
    opt2.load_state(opt.state())
    g[...] = opt2.grads[...] = rng.standard_normal(10)
    opt.step()
    opt2.step()
    np.testing.assert_array_equal(p, p2)
