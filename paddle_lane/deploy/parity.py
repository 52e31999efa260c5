"""How closely two predictors agree (an export against its checkpoint, INT8 against FP32)."""
from __future__ import annotations

import numpy as np


def compare(reference, candidate, frames) -> dict:
    """Max abs probability difference and share of equal full-size ids over the frames."""
    worst, agree, total = 0.0, 0, 0
    for rgb in frames:
        p_ref, p_new = reference.predict_probs(rgb), candidate.predict_probs(rgb)
        worst = max(worst, float(np.abs(p_ref - p_new).max()))
        full = (rgb.shape[1], rgb.shape[0])
        ids_ref, ids_new = reference.to_train_ids(p_ref, full), candidate.to_train_ids(p_new, full)
        agree += int((ids_ref == ids_new).sum())
        total += ids_ref.size
    return {"max_abs_prob_diff": worst, "id_agreement": agree / total if total else 1.0}
