"""The empirical NTK from per-layer features: one Gram term, one row-block loop.

Both finite networks (:class:`infntk.empirical.MLP` and :class:`infntk.finite.FiniteNetwork`)
factor their NTK layer by layer (Arora et al. 2019, eq. (5); docs/conventions.md, section 2):
for each Dense layer ``l`` with input ``a^l`` (already scaled by ``s_l``), bias factor
``beta_l`` and back-propagated output gradient ``g^l``,

    Theta-hat(x, y) = sum_l (<s_l a^l(x), s_l a^l(y)> + beta_l^2) <g^l(x), g^l(y)>.

Each network produces, for a row block and an output seed ``top``, its Dense layers' terms
``[(a, g, s, beta, has_bias), ...]`` (layer input, back-propagated gradient, weight and bias
factors); this module turns them into parameter gradients, Jacobians and features, and the
features into the kernel, block by block, so that the Jacobian is never formed. Both callers
use the same blocks, which is why a homogeneous ``FiniteNetwork`` gives the same floats as
the ``MLP`` of the same weights.
"""
from __future__ import annotations

import numpy as np

from ._validation import check_finite, check_positive_int, check_real_dtype

__all__ = ["BLOCK_BYTES", "CACHE_BYTES", "block_rows", "check_dout", "dense_gradients",
           "dense_jacobian", "dense_features", "feature_gram", "blocked_ntk"]

# features of one row block are kept to about this many bytes
BLOCK_BYTES = 256 * 2 ** 20
# the features of all of X2 are cached (not recomputed for every block of X1) below this
CACHE_BYTES = 2 * 2 ** 30


def block_rows(block_size, per_row):
    """Rows per block: ``block_size`` validated, or about ``BLOCK_BYTES`` of features."""
    if block_size is None:
        return max(1, min(4096, BLOCK_BYTES // per_row))
    return check_positive_int(block_size, "block_size")


def check_dout(dout, n):
    """``dout`` as a finite real vector of one value per row (``n`` rows)."""
    dout = check_real_dtype(dout, "dout")
    if dout.shape != (n,):
        raise ValueError(f"dout must have shape ({n},) (one value per row of X), "
                         f"got {dout.shape}.")
    check_finite(dout, "dout")
    return dout


def dense_gradients(terms, dtype):
    """Parameter gradients ``[dW, (db)]`` per Dense layer: ``s g^T a`` and ``beta sum g``."""
    grads = []
    for a, g, s, beta, has_bias in terms:
        gW = g.T @ a
        if s != 1.0:
            gW *= dtype.type(s)
        grads.append(gW)
        if has_bias:
            grads.append(dtype.type(beta) * g.sum(axis=0))
    return grads


def dense_jacobian(terms, dtype):
    """The Jacobian ``(n, P)`` from the terms of ``top = 1`` (parameters flattened in order)."""
    n = terms[0][0].shape[0]
    blocks = []
    for a, g, s, beta, has_bias in terms:
        blocks.append((dtype.type(s) * g[:, :, None] * a[:, None, :]).reshape(n, -1))
        if has_bias:
            blocks.append(dtype.type(beta) * g)
    return np.concatenate(blocks, axis=1)


def dense_features(terms, dtype):
    """``[(s a, g), ...]``: the features whose Grams make the NTK (see :func:`feature_gram`)."""
    return [(a * dtype.type(s) if s != 1.0 else a, g) for a, g, s, _, _ in terms]


def feature_gram(F1, F2, biases, dtype):
    """``sum_l (a1_l a2_l^T + beta_l^2) * (g1_l g2_l^T)`` for the features of two row blocks.

    Parameters
    ----------
    F1, F2 : list of (ndarray (n, n_in_l), ndarray (n, n_out_l))
        ``(s_l a^l, g^l)`` per Dense layer.
    biases : list of float
        ``beta_l`` per layer (0 for a layer without a bias: no term is added).
    dtype : numpy dtype of the network.

    Returns
    -------
    ndarray, shape (n1, n2)
    """
    K = None
    for (a1, g1), (a2, g2), beta in zip(F1, F2, biases):
        term = a1 @ a2.T
        if beta != 0.0:
            term += dtype.type(beta * beta)
        if g1.shape[1] == 1:
            term *= g1 * g2.T
        else:
            term *= g1 @ g2.T
        if K is None:
            K = term
        else:
            K += term
    return K


def blocked_ntk(features, X1, X2, same, bs, per_row, biases, dtype):
    """The NTK ``(n1, n2)`` over row blocks of ``bs`` rows; ``features(rows)`` as above.

    With ``same`` (``X2`` is ``X1``) the lower blocks are mirrored and the diagonal blocks
    symmetrized, so the result is exactly symmetric. The features of ``X2`` are cached when
    they total at most ``CACHE_BYTES`` (``per_row`` bytes per row); otherwise they are
    recomputed for every block of ``X1`` (time grows, memory stays at two blocks).
    """
    n1, n2 = X1.shape[0], X2.shape[0]
    K = np.empty((n1, n2), dtype=dtype)
    cache = {} if per_row * n2 <= CACHE_BYTES else None

    def feats2(j):
        if cache is None:
            return features(X2[j:j + bs])
        if j not in cache:
            cache[j] = features(X2[j:j + bs])
        return cache[j]

    for i in range(0, n1, bs):
        Fi = feats2(i) if same else features(X1[i:i + bs])
        for j in range(0, n2, bs):
            if same and j < i:
                K[i:i + bs, j:j + bs] = K[j:j + bs, i:i + bs].T
                continue
            blk = feature_gram(Fi, Fi if (same and j == i) else feats2(j), biases, dtype)
            if same and j == i:
                blk = 0.5 * (blk + blk.T)
            K[i:i + bs, j:j + bs] = blk
    return K
