"""CPU kernels for Stochastic Activation Pruning (numba, parallel over the batch).

Each kernel takes the activations ``h`` (float32 or float64, shape (B, a)) and writes, per example,
the SAP multiplier ``m`` (``m_j = 1 / q_j`` for a kept element, 0 otherwise, with
``q_j = 1 - (1 - p_j)^r`` and ``p_j = |h_j| / sum_k |h_k|``) and/or the output ``y = h * m``, all
in one pass over the example after a summing pass: nothing is computed by separate torch passes.

Keep probabilities: ``q = -expm1(r * log1p(-p))`` evaluated branch-free so that the loop vectorizes
(numba has no vector ``log1p``/``expm1`` without SVML): ``-log1p(-p)`` by its power series (exact to
about 1e-16 for ``p <= 1/32``), then ``expm1(-t)`` from a degree-10 Taylor polynomial at
``t / 256`` followed by eight doublings ``expm1(2s) = expm1(s) * (expm1(s) + 2)``, which keeps the
relative error near 1e-15 for small ``q`` and near 1 alike. An example with some ``p > 1/32`` (a
few activations carrying the mass) is redone with libm's ``log1p``/``expm1``.

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

_P_SERIES = 1.0 / 32.0  # largest p for which the log1p series below is used
_T_MAX = 40.0  # exp(-40) < 2**-53: q rounds to 1 beyond this
_HUGE_ROW_SCALE = 2.0**-600  # exact rescaling of a float64 row whose sum overflows

_BUCKETS_PER_DRAW = 2  # counting-sort buckets per draw: a bucket holds 0.5 draws on average


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


@nb.njit(inline="always", cache=True)
def _keep_prob_series(p: float, r: float) -> float:  # pragma: no cover - compiled
    """``q = 1 - (1 - p)^r``, exact for ``0 <= p <= 1/32`` (larger p are clamped), branch-free."""
    p = min(p, _P_SERIES)
    # -log1p(-p) = p + p^2/2 + ... ; the terms past p^11 are below 1e-16 relative.
    s = 1.0 / 11.0
    s = 1.0 / 10.0 + p * s
    s = 1.0 / 9.0 + p * s
    s = 1.0 / 8.0 + p * s
    s = 1.0 / 7.0 + p * s
    s = 1.0 / 6.0 + p * s
    s = 1.0 / 5.0 + p * s
    s = 1.0 / 4.0 + p * s
    s = 1.0 / 3.0 + p * s
    s = 1.0 / 2.0 + p * s
    s = 1.0 + p * s
    t = min(r * (p * s), _T_MAX)
    # expm1(x) for x = -t / 256 in [-0.157, 0]: Taylor to x^10 (error below 1e-16 relative).
    x = t * (-1.0 / 256.0)
    e = 1.0 / 3628800.0
    e = 1.0 / 362880.0 + x * e
    e = 1.0 / 40320.0 + x * e
    e = 1.0 / 5040.0 + x * e
    e = 1.0 / 720.0 + x * e
    e = 1.0 / 120.0 + x * e
    e = 1.0 / 24.0 + x * e
    e = 1.0 / 6.0 + x * e
    e = 1.0 / 2.0 + x * e
    e = 1.0 + x * e
    e = x * e
    # Eight doublings: expm1(2x) = expm1(x) * (expm1(x) + 2), stable for x <= 0.
    e = e * (e + 2.0)
    e = e * (e + 2.0)
    e = e * (e + 2.0)
    e = e * (e + 2.0)
    e = e * (e + 2.0)
    e = e * (e + 2.0)
    e = e * (e + 2.0)
    e = e * (e + 2.0)
    return -e


@nb.njit(inline="always", cache=True)
def _keep_prob_libm(p: float, r: float) -> float:  # pragma: no cover - compiled
    """``q = 1 - (1 - p)^r`` for any ``0 <= p`` (p = 1 gives q = 1), with libm (scalar)."""
    return -math.expm1(r * math.log1p(-min(p, 1.0)))


@nb.njit(inline="always", cache=True, error_model="numpy")
def _scale(q: float, v: float, inv_m_cap: float, inv_out_cap: float) -> float:  # pragma: no cover
    """``1 / q`` capped so that it stays below ``m_cap`` and ``v / q`` below ``out_cap``."""
    return 1.0 / max(q, v * inv_out_cap, inv_m_cap)


@nb.njit(inline="always", cache=True)
def _act(hv: float, lo: float) -> float:  # pragma: no cover - compiled
    """``max(hv, lo)`` keeping NaN: ReLU for ``lo = 0``, the identity for ``lo = -inf``.

    A select, not a branch, so that the loops using it vectorize.
    """
    return lo if hv < lo else hv


@nb.njit(cache=True)
def _abs_sum(h_row: np.ndarray, lo: float, row_scale: float) -> float:  # pragma: no cover
    """``sum_j |act(h_row[j])| * row_scale`` in float64, the same on every CPU.

    Element ``j`` goes to lane ``j % 8`` and the lanes are added in a fixed order. Letting the
    compiler reassociate the sum instead would make it depend on the host's vector width, and a
    last-bit change in ``p`` can flip a draw: SAP's games would then differ between CPUs for a
    reason of our own. Eight independent lanes still vectorize (or pipeline) without it.
    """
    n = h_row.shape[0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    body = n - n % 8
    for j in range(0, body, 8):
        a0 += abs(np.float64(_act(h_row[j], lo))) * row_scale
        a1 += abs(np.float64(_act(h_row[j + 1], lo))) * row_scale
        a2 += abs(np.float64(_act(h_row[j + 2], lo))) * row_scale
        a3 += abs(np.float64(_act(h_row[j + 3], lo))) * row_scale
        a4 += abs(np.float64(_act(h_row[j + 4], lo))) * row_scale
        a5 += abs(np.float64(_act(h_row[j + 5], lo))) * row_scale
        a6 += abs(np.float64(_act(h_row[j + 6], lo))) * row_scale
        a7 += abs(np.float64(_act(h_row[j + 7], lo))) * row_scale
    tail = 0.0
    for j in range(body, n):
        tail += abs(np.float64(_act(h_row[j], lo))) * row_scale
    return (((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))) + tail


@nb.njit(inline="always", cache=True)
def _row_total(h_row: np.ndarray, lo: float) -> tuple[float, float]:  # pragma: no cover
    """``(1 / sum_j |act(h_row[j])|, row_scale)``; the sum is of the row scaled by ``row_scale``,
    2**-600 if the plain sum overflows. An all-zero or non-finite row gives 0 for ``1 / sum``."""
    row_scale = 1.0
    total = _abs_sum(h_row, lo, row_scale)
    if math.isinf(total):
        row_scale = _HUGE_ROW_SCALE
        total = _abs_sum(h_row, lo, row_scale)
    inv_total = 1.0 / total if total > 0.0 and math.isfinite(total) else 0.0
    return inv_total, row_scale


@nb.njit(inline="always", cache=True)
def _low(h: np.ndarray, relu: bool) -> float:  # pragma: no cover - compiled
    """``lo`` for :func:`_act` in ``h``'s dtype: 0 (ReLU first) or -inf (SAP on ``h`` itself)."""
    lo = np.full(1, -np.inf, h.dtype)
    if relu:
        lo[0] = 0.0
    return lo[0]


@nb.njit(inline="always", cache=True, error_model="numpy")
def _fast_row(  # pragma: no cover - compiled
    h_row: np.ndarray,
    lo: float,
    r: float,
    key: np.uint64,
    scales: tuple[float, float, float, float],
    m_row: np.ndarray,
    y_row: np.ndarray,
    series: bool,
) -> int:
    """One row in fast mode; returns how many ``p`` exceed the series range.

    ``series`` picks the vectorized keep probabilities (else libm's, for rows with a large ``p``).
    Both outputs are always written: more flags in the loop cost its vectorization.
    ``scales`` is ``(row_scale, 1 / row sum, 1 / m_cap, 1 / out_cap)``.
    """
    row_scale, inv_total, inv_m_cap, inv_out_cap = scales
    big = 0
    for j in range(h_row.shape[0]):
        hv = _act(h_row[j], lo)
        v = abs(np.float64(hv))
        p = (v * row_scale) * inv_total
        big += int(p > _P_SERIES)
        q = _keep_prob_series(p, r) if series else _keep_prob_libm(p, r)
        mj = _scale(q, v, inv_m_cap, inv_out_cap) if _uniform(key, j) < q else 0.0
        m_row[j] = mj
        y_row[j] = mj  # rounded to y's dtype, then multiplied in it: y == act(h) * m exactly
        y_row[j] = hv * y_row[j]
    return big


@nb.njit(cache=True, error_model="numpy", fastmath={"contract"})
def _fast_row_series(  # pragma: no cover - compiled
    h_row: np.ndarray,
    lo: float,
    r: float,
    key: np.uint64,
    row_scale: float,
    inv_total: float,
    inv_m_cap: float,
    inv_out_cap: float,
    m_row: np.ndarray,
    y_row: np.ndarray,
) -> int:
    """:func:`_fast_row` with the vectorized keep probabilities (a constant flag once inlined)."""
    scales = row_scale, inv_total, inv_m_cap, inv_out_cap
    return _fast_row(h_row, lo, r, key, scales, m_row, y_row, True)


@nb.njit(cache=True, error_model="numpy")
def _fast_row_libm(  # pragma: no cover - compiled
    h_row: np.ndarray,
    lo: float,
    r: float,
    key: np.uint64,
    row_scale: float,
    inv_total: float,
    inv_m_cap: float,
    inv_out_cap: float,
    m_row: np.ndarray,
    y_row: np.ndarray,
) -> int:
    """:func:`_fast_row` with libm's keep probabilities (rows with some ``p > 1/32``)."""
    scales = row_scale, inv_total, inv_m_cap, inv_out_cap
    return _fast_row(h_row, lo, r, key, scales, m_row, y_row, False)


@nb.njit(cache=True, error_model="numpy", fastmath={"contract"})
def _scale_row_series(  # pragma: no cover - compiled
    h_row: np.ndarray,
    lo: float,
    r: float,
    row_scale: float,
    inv_total: float,
    inv_m_cap: float,
    inv_out_cap: float,
    m_row: np.ndarray,
) -> int:
    """:func:`_scale_row` with the vectorized keep probabilities."""
    scales = row_scale, inv_total, inv_m_cap, inv_out_cap
    return _scale_row(h_row, lo, r, scales, m_row, True)


@nb.njit(cache=True, error_model="numpy")
def _scale_row_libm(  # pragma: no cover - compiled
    h_row: np.ndarray,
    lo: float,
    r: float,
    row_scale: float,
    inv_total: float,
    inv_m_cap: float,
    inv_out_cap: float,
    m_row: np.ndarray,
) -> int:
    """:func:`_scale_row` with libm's keep probabilities."""
    scales = row_scale, inv_total, inv_m_cap, inv_out_cap
    return _scale_row(h_row, lo, r, scales, m_row, False)


@nb.njit(parallel=True, cache=True, error_model="numpy")
def fast_fill(  # pragma: no cover - compiled
    h: np.ndarray,
    r: int,
    seed: np.uint64,
    m_cap: float,
    out_cap: float,
    m: np.ndarray,
    y: np.ndarray,
    write_m: bool,
    write_y: bool,
    relu: bool,
) -> None:
    """Fast mode: keep ``act(h[i, j])`` with probability ``q_ij``, scaled by ``1 / q_ij``.

    Writes the multiplier to ``m`` if ``write_m`` and ``act(h) * m`` to ``y`` if ``write_y`` (both
    of one dtype, float32 or float64); an output that is not written may be a dummy array.
    ``act`` is ReLU if ``relu`` (fused ReLU + SAP, ``h`` is the ReLU's input), else the identity.
    """
    n_rows, a = h.shape
    rf = float(r)
    inv_m_cap = 1.0 / m_cap
    inv_out_cap = 1.0 / out_cap
    lo = _low(h, relu)
    for i in nb.prange(n_rows):
        h_row = h[i]
        inv_total, row_scale = _row_total(h_row, lo)
        key = _row_key(seed, i)
        scratch = np.empty(0 if write_m and write_y else a, m.dtype)
        m_row = m[i] if write_m else scratch
        y_row = y[i] if write_y else scratch
        scales = (row_scale, inv_total, inv_m_cap, inv_out_cap)
        if _fast_row_series(h_row, lo, rf, key, *scales, m_row, y_row) > 0:
            _fast_row_libm(h_row, lo, rf, key, *scales, m_row, y_row)


@nb.njit(inline="always", cache=True, error_model="numpy")
def _scale_row(  # pragma: no cover - compiled
    h_row: np.ndarray,
    lo: float,
    r: float,
    scales: tuple[float, float, float, float],
    m_row: np.ndarray,
    series: bool,
) -> int:
    """``m_row[j] = 1 / q_j`` where ``q_j > 0``, else 0; returns how many ``p`` exceed the series.

    ``scales`` is ``(row_scale, 1 / row sum, 1 / m_cap, 1 / out_cap)``.
    """
    row_scale, inv_total, inv_m_cap, inv_out_cap = scales
    big = 0
    for j in range(h_row.shape[0]):
        v = abs(np.float64(_act(h_row[j], lo)))
        p = (v * row_scale) * inv_total
        big += int(p > _P_SERIES)
        q = _keep_prob_series(p, r) if series else _keep_prob_libm(p, r)
        m_row[j] = _scale(q, v, inv_m_cap, inv_out_cap) if q > 0.0 else 0.0
    return big


@nb.njit(parallel=True, cache=True, error_model="numpy")
def exact_fill(  # pragma: no cover - compiled
    h: np.ndarray,
    r: int,
    seed: np.uint64,
    m_cap: float,
    out_cap: float,
    m: np.ndarray,
    y: np.ndarray,
    write_y: bool,
    relu: bool,
) -> None:
    """Exact mode: ``r`` draws from Categorical(p) per row; hit elements scaled by ``1 / q``.

    Writes the multiplier to ``m`` and, if ``write_y``, ``act(h) * m`` to ``y`` (same dtype as
    ``m``). ``act`` is ReLU if ``relu`` (``h`` is the ReLU's input), else the identity.
    """
    n_rows, a = h.shape
    rf = float(r)
    inv_m_cap = 1.0 / m_cap
    inv_out_cap = 1.0 / out_cap
    n_buckets = _BUCKETS_PER_DRAW * r
    lo = _low(h, relu)
    for i in nb.prange(n_rows):
        h_row, m_row = h[i], m[i]
        inv_total, row_scale = _row_total(h_row, lo)
        # Unmasked scales first (vectorized), then the draws zero the elements they miss.
        scales = (row_scale, inv_total, inv_m_cap, inv_out_cap)
        if _scale_row_series(h_row, lo, rf, *scales, m_row) > 0:
            _scale_row_libm(h_row, lo, rf, *scales, m_row)
        last = a - 1
        while last >= 0 and not (abs(np.float64(_act(h_row[last], lo))) * row_scale > 0.0):
            last -= 1
        if inv_total > 0.0 and last >= 0:
            key = _row_key(seed, i)
            _exact_draws(h_row, lo, r, n_buckets, key, row_scale, inv_total, last, m_row)
        if write_y:
            y_row = y[i]
            for j in range(a):
                y_row[j] = _act(h_row[j], lo) * m_row[j]


@nb.njit(cache=True)
def _exact_draws(  # pragma: no cover - compiled
    h_row: np.ndarray,
    lo: float,
    r: int,
    n_buckets: int,
    key: np.uint64,
    row_scale: float,
    inv_total: float,
    last: int,
    m_row: np.ndarray,
) -> None:
    """Zero ``m_row[j]`` for every element that none of the row's ``r`` draws hits."""
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
    for j in range(last):
        cdf += abs(np.float64(_act(h_row[j], lo))) * row_scale
        c = cdf * inv_total
        b = min(int(c * n_buckets), n_buckets)
        first = start[b]
        below = first + (draws[first] < c)
        for k in range(first + 1, start[b + 1]):
            below += draws[k] < c
        if below == below_prev:
            m_row[j] = 0.0
        below_prev = below
    if r == below_prev:  # the last element with mass owns [c_{last-1}, 1)
        m_row[last] = 0.0
