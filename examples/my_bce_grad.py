"""A learner's own binary cross-entropy code, to verify with `xent check --loss bce`.

    xent check --loss bce --grad-fn examples/my_bce_grad.py:grad --loss-fn examples/my_bce_grad.py:loss
    xent check --loss bce --grad-fn examples/my_bce_grad.py:softmax_grad     # fails: names the entries

Each function takes z, an (N, k) array of logits, and y, an (N, k) array of targets in [0, 1]
(multi-hot or probabilities), and works on all samples at once. A sample's loss is the sum over
its classes of -[y log σ(z) + (1 - y) log(1 - σ(z))]. Written with np.exp, np.log1p and np.where
on the real part only, so the functions also accept complex z (`--method complex`).
"""

import numpy as np


def sigmoid(z):
    """Returns σ(z) = 1 / (1 + e^{-z}) entry by entry, from e^{-|z|} so that exp cannot overflow."""
    e = np.exp(np.where(z.real >= 0, -z, z))
    return np.where(z.real >= 0, 1 / (1 + e), e / (1 + e))


def softplus(z):
    """Returns log(1 + e^z) = -log(1 - σ(z)) without overflow."""
    return np.where(z.real >= 0, z, 0) + np.log1p(np.exp(np.where(z.real >= 0, -z, z)))


def loss(z, y):
    """Returns each sample's loss Σ_c y softplus(-z) + (1 - y) softplus(z), shape (N,)."""
    return (y * softplus(-z) + (1 - y) * softplus(z)).sum(axis=1)


def grad(z, y):
    """Returns each sample's gradient σ(z) - y, shape (N, k): right."""
    return sigmoid(z) - y


def hessian(z, y):
    """Returns each sample's Hessian diag(σ(z)(1 - σ(z))), shape (N, k, k): right."""
    s = sigmoid(z)
    return (s * (1 - s))[:, :, None] * np.eye(z.shape[1])


def softmax_grad(z, y):
    """Returns softmax(z) - y: wrong for binary cross-entropy.

    The classes of a multi-label problem are separate yes/no questions: each has its own σ(z_c),
    and no normaliser couples them.
    """
    e = np.exp(z - z.real.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True) - y
