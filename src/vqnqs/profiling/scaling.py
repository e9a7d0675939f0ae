"""Power-law fits of cost vs system size (numpy only: importable without torch's start-up cost)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def fit_power_law(n: Iterable[float], y: Iterable[float]) -> tuple[float, float]:
    """Least-squares fit of ``y = prefactor * n**exponent`` in log-log space -> ``(exponent, prefactor)``.

    Minimises ``sum (log y - log prefactor - exponent log n)^2``; every ``n`` and ``y`` must be finite and
    positive, with at least two distinct ``n``.
    """
    n_arr = np.asarray(list(n), dtype=float)
    y_arr = np.asarray(list(y), dtype=float)
    if n_arr.shape != y_arr.shape or n_arr.size < 2:
        raise ValueError(f"fit_power_law: need >= 2 matching points, got {n_arr.size} n and {y_arr.size} y")
    if not np.isfinite(np.r_[n_arr, y_arr]).all() or (n_arr <= 0).any() or (y_arr <= 0).any():
        raise ValueError("fit_power_law: every n and y must be finite and positive")
    if np.unique(n_arr).size < 2:
        raise ValueError("fit_power_law: need at least two distinct n")
    exponent, log_prefactor = np.polyfit(np.log(n_arr), np.log(y_arr), 1)
    return float(exponent), float(np.exp(log_prefactor))
