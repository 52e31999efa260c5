"""Class weights for the loss from class pixel frequencies.

inverse_log (ENet):      w_c = 1 / ln(1.02 + f_c),  f_c = pixels_c / all pixels
median_frequency (SegNet): w_c = median(f) / f_c, median over classes present
Absent classes get weight 0 (they never occur in a label, so the weight is unused).
Weights are scaled so the background weight is 1, keeping the loss scale familiar.
"""
from __future__ import annotations

import numpy as np

FORMULAS = {
    "inverse_log": "w_c = 1 / ln(1.02 + f_c), scaled so w_background = 1",
    "median_frequency": "w_c = median(f_present) / f_c, scaled so w_background = 1",
    "none": "w_c = 1",
}


def class_weights(counts, method: str = "inverse_log") -> list[float]:
    """Per-class loss weights from per-class pixel counts."""
    counts = np.asarray(counts, np.float64)
    if method == "none":
        return [1.0] * len(counts)
    total = counts.sum()
    if total <= 0:
        return [1.0] * len(counts)
    freq = counts / total
    present = freq > 0
    w = np.zeros_like(freq)
    if method == "inverse_log":
        w[present] = 1.0 / np.log(1.02 + freq[present])
    elif method == "median_frequency":
        w[present] = np.median(freq[present]) / freq[present]
    else:
        raise ValueError(f"class_weight: unknown method {method!r}; use one of {list(FORMULAS)}")
    if w[0] > 0:
        w = w / w[0]
    return [round(float(x), 6) for x in w]
