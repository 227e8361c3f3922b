"""CPU kernels for Stochastic Activation Pruning (numba, parallel over the batch).

The caller computes the keep probabilities ``q_j = 1 - (1 - p_j)^r`` with vectorized torch ops
and passes them negated (``neg_q = -q``, which saves two passes); these kernels make the random
part and write the SAP multiplier ``m`` (same shape; writing it over ``neg_q`` is allowed) so that
SAP's output is ``h * m``: ``m_j = 1 / q_j`` for a kept element, 0 otherwise.

Randomness: a counter-based SplitMix64 stream per example, ``u_k = mix(row_key + (k + 1) * golden)``
with ``row_key = hash(seed, example index)``. Draws depend on the seed only, never on the number
of threads, and the fast kernel's generator vectorizes (no dependency between draws).

- :func:`fast_fill` keeps element ``j`` independently when ``u_j < q_j``.
- :func:`exact_fill` makes exactly ``r`` draws with replacement from Categorical(p) per example:
  the ``r`` uniforms are counting-sorted into ``2r`` equal-width buckets; element ``j`` is hit when
  the number of draws below its CDF edge grows, which each element finds from its bucket's offset
  plus a look at that bucket's (on average half a) draw. A row costs O(a + r), with no logarithms,
  no binary search, no serial merge and almost no unpredictable branches.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_ONE = np.uint64(1)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53


@nb.njit(inline="always", cache=True)
def _mix(z: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@nb.njit(inline="always", cache=True)
def _row_key(seed: np.uint64, row: int) -> np.uint64:  # pragma: no cover - compiled
    return _mix(seed ^ _mix(np.uint64(row) * _GOLDEN + _GOLDEN))


@nb.njit(inline="always", cache=True)
def _uniform(key: np.uint64, k: int) -> float:  # pragma: no cover - compiled
    """The ``k``-th uniform of stream ``key``, a float64 in the open interval (0, 1)."""
    z = _mix(key + (np.uint64(k) + _ONE) * _GOLDEN)
    return (float(z >> _S11) + 0.5) * _INV53


_BUCKETS_PER_DRAW = 2  # counting-sort buckets per draw: a bucket holds 0.5 draws on average


@nb.njit(inline="always", cache=True, error_model="numpy")
def _scale(v: float, neg_q: float, m_cap: float, out_cap: float) -> float:  # pragma: no cover
    """``1 / q`` for ``q = -neg_q``, capped so the multiplier and ``v / q`` stay finite.

    Branch-free: q = 0 gives +inf before the cap (IEEE division, numpy error model).
    """
    return min(-1.0 / neg_q, m_cap, out_cap / v)


@nb.njit(parallel=True, cache=True, error_model="numpy")
def fast_fill(  # pragma: no cover - compiled
    h: np.ndarray,
    neg_q: np.ndarray,
    seed: np.uint64,
    m_cap: float,
    out_cap: float,
    out: np.ndarray,
) -> None:
    """``out[i, j] = 1 / q`` with probability ``q = -neg_q[i, j]``, else 0 (may reuse neg_q)."""
    n_rows, a = neg_q.shape
    for i in nb.prange(n_rows):
        key = _row_key(seed, i)
        for j in range(a):
            nq = neg_q[i, j]
            scale = _scale(abs(h[i, j]), nq, m_cap, out_cap)
            out[i, j] = scale if _uniform(key, j) < -nq else 0.0


@nb.njit(parallel=True, cache=True, error_model="numpy")
def exact_fill(  # pragma: no cover - compiled
    h: np.ndarray,
    neg_q: np.ndarray,
    r: int,
    seed: np.uint64,
    m_cap: float,
    out_cap: float,
    out: np.ndarray,
) -> None:
    """Mark the elements hit by ``r`` draws from Categorical(|h| / sum|h|), then scale by 1/q."""
    n_rows, a = h.shape
    n_buckets = _BUCKETS_PER_DRAW * r
    for i in nb.prange(n_rows):
        total = 0.0
        last = -1
        for j in range(a):
            v = abs(h[i, j])
            total += v
            if v > 0.0:
                last = j
            out[i, j] = 0.0
        if not (total > 0.0) or not math.isfinite(total):
            continue
        key = _row_key(seed, i)
        # Counting sort of the r uniforms into equal-width buckets.
        start = np.zeros(n_buckets + 2, np.int32)
        for k in range(r):
            start[min(int(_uniform(key, k) * n_buckets), n_buckets - 1) + 1] += 1
        for b in range(n_buckets):
            start[b + 1] += start[b]
        start[n_buckets + 1] = r
        fill = start[:n_buckets].copy()
        draws = np.empty(r + 1, np.float64)
        draws[r] = 2.0  # sentinel above every uniform
        for k in range(r):
            u = _uniform(key, k)
            b = min(int(u * n_buckets), n_buckets - 1)
            draws[fill[b]] = u
            fill[b] += 1
        # Element j owns [c_{j-1}, c_j) with c_j = cdf_j / total; it is hit when the number of draws
        # below c_j, N(c_j), exceeds N(c_{j-1}). N(c) = draws in the buckets before c's bucket
        # (monotone rounding keeps bucket order and value order consistent) + the draws of c's
        # own bucket below c. The first of those is checked without a branch (an empty bucket's
        # slot holds a later bucket's draw, or the sentinel, both above c); the rare others loop.
        below_prev = 0
        cdf = 0.0
        inv_total = 1.0 / total
        for j in range(last):
            v = abs(h[i, j])
            cdf += v
            c = cdf * inv_total
            b = min(int(c * n_buckets), n_buckets)
            first = start[b]
            below = first + (draws[first] < c)
            for k in range(first + 1, start[b + 1]):
                below += draws[k] < c
            scale = _scale(v, neg_q[i, j], m_cap, out_cap)
            out[i, j] = scale if below > below_prev else 0.0
            below_prev = below
        if r > below_prev:  # the last element with mass owns [c_{last-1}, 1)
            out[i, last] = _scale(abs(h[i, last]), neg_q[i, last], m_cap, out_cap)
