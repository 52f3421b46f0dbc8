"""A learner's own cross-entropy code, to verify with `xent check`.

    xent check --grad-fn examples/my_grad.py:grad --loss-fn examples/my_grad.py:loss
    xent check --grad-fn examples/my_grad.py:seed_grad      # fails: names the off-label entries

Each function takes z, an (N, k) array of logits, and y, an (N,) array of integer labels,
and works on all samples at once. Written with np.exp and np.log only, so the functions also
accept complex z (`--method complex`).
"""

import numpy as np


def softmax(z):
    """Returns softmax(z) row by row, shifted by the row maximum so exp cannot overflow."""
    e = np.exp(z - z.real.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def one_hot(y, k):
    """Returns the (N, k) one-hot rows of the labels y."""
    return np.eye(k)[y]


def loss(z, y):
    """Returns each sample's cross-entropy -log softmax(z)_y, shape (N,)."""
    shifted = z - z.real.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -np.take_along_axis(log_p, y[:, None], axis=1)[:, 0]


def grad(z, y):
    """Returns each sample's gradient softmax(z) - one_hot(y), shape (N, k): right."""
    return softmax(z) - one_hot(y, z.shape[1])


def seed_grad(z, y):
    """Returns the gradient with the seed post's Case 1: 0 for every class but the label.

    Wrong: for j != label the gradient is softmax(z)_j, because the normaliser sum_n exp(z_n)
    depends on z_j too.
    """
    p = softmax(z)
    rows = np.arange(len(y))
    out = np.zeros_like(p)
    out[rows, y] = p[rows, y] - 1
    return out
