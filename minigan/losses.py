r"""Binary cross-entropy with PyTorch's ``nn.BCELoss`` semantics (mean reduction).

.. math::
    \ell = -\frac1N \sum_n \big[t_n \max(\log p_n, -100) + (1 - t_n) \max(\log(1 - p_n), -100)\big]

    \partial \ell / \partial p_n = \frac{p_n - t_n}{\max(p_n (1 - p_n),\ 10^{-12})} \cdot \frac1N

The clamps are PyTorch's: the logs at -100 so a saturated p in {0, 1} gives a finite loss, the
denominator at 1e-12 so the gradient stays finite (and, multiplied by the sigmoid's y(1-y) = 0, exactly 0).
Note that the gradient formula is PyTorch's, not the derivative of the clamped loss.
Shapes: p (N, 1) or (N,), t a scalar or an array shaped like p.
"""

import numpy as np

from minigan.backend import array_module

LOG_CLAMP = -100.0
GRAD_EPS = 1e-12


def bce_forward(p, target):
    """Mean binary cross-entropy of probabilities ``p`` against ``target``; a 0-d array of p's module."""
    xp = array_module(p)
    with np.errstate(divide="ignore"):  # log(0) = -inf, clamped just below
        log_p = xp.maximum(xp.log(p), LOG_CLAMP)
        log_1mp = xp.maximum(xp.log(1 - p), LOG_CLAMP)
    return -(target * log_p + (1 - target) * log_1mp).mean()


def bce_backward(p, target, out=None):
    """dL/dp of ``bce_forward(p, target)``, written into ``out`` (shaped like p) when given."""
    xp = array_module(p)
    n = p.size
    grad = (p - target) / xp.maximum(p * (1 - p), p.dtype.type(GRAD_EPS))
    grad *= p.dtype.type(1.0 / n)
    if out is None:
        return grad
    out[...] = grad
    return out



def cross_entropy_forward(logits, labels):
    r"""Mean softmax cross-entropy of ``logits`` (N, C) against integer ``labels`` (N,).

    .. math::
        \ell = -\frac1N \sum_n \log \mathrm{softmax}(z_n)_{y_n}
             = \frac1N \sum_n \Big(\log \sum_c e^{z_{nc} - m_n} - (z_{n y_n} - m_n)\Big),
        \quad m_n = \max_c z_{nc}

    (subtracting the row maximum keeps every exponent <= 0, so nothing overflows).
    """
    xp = array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_sum = xp.log(xp.exp(shifted).sum(axis=1))
    return (log_sum - shifted[xp.arange(len(labels)), labels]).mean()


def cross_entropy_backward(logits, labels):
    r"""dL/dz of ``cross_entropy_forward``: :math:`(\mathrm{softmax}(z_n) - \mathrm{onehot}(y_n)) / N`."""
    xp = array_module(logits)
    e = xp.exp(logits - logits.max(axis=1, keepdims=True))
    grad = e / e.sum(axis=1, keepdims=True)
    grad[xp.arange(len(labels)), labels] -= 1
    grad /= len(labels)
    return grad
