"""Record-level train/val split, seeded and stratified so that every class present in
the data appears in validation (when it lives in more than one record)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def split_by_group(frames: pd.DataFrame, class_columns: list[str], val_fraction: float,
                   seed: int) -> tuple[np.ndarray, list[str]]:
    """Boolean val mask over `frames` (needs a `group` column) and a list of warnings.

    Rarest class first, a record holding it goes to validation unless it is the only
    record with that class; then random whole records fill validation to the target.
    No record moves if that would leave one of its classes without training data.
    """
    warnings: list[str] = []
    if val_fraction <= 0 or frames.empty:
        return np.zeros(len(frames), bool), warnings
    groups = sorted(frames["group"].unique())
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(len(groups))]
    has = frames.groupby("group")[class_columns].sum().gt(0).reindex(order)
    sizes = frames.groupby("group").size().reindex(order)
    target = max(1, int(round(val_fraction * len(frames))))
    if len(groups) < 2:
        warnings.append(f"only one record ({groups[0]}): cannot split by record; validation is empty")
        return np.zeros(len(frames), bool), warnings

    val: list[str] = []
    totals = has.sum()

    def keeps_train(g: str) -> bool:
        """Moving g to validation leaves every class it holds in some training record."""
        rest = has.drop(index=val + [g])
        return bool((rest.any() | ~has.loc[g]).all())

    for cls in totals[totals > 0].sort_values(kind="stable").index:
        if has.loc[val, cls].any() if val else False:
            continue
        cands = [g for g in order if has.loc[g, cls] and g not in val]
        if len(cands) < 2:
            warnings.append(f"class {cls} occurs in a single record; kept it in training only")
            continue
        cands = [g for g in cands if keeps_train(g)]
        if cands:
            val.append(min(cands, key=lambda g: sizes[g]))  # smallest record: least data moved
    for g in order:
        if sizes[val].sum() >= target or len(val) >= len(groups) - 1:
            break
        if g not in val and keeps_train(g):
            val.append(g)
    missing = [c for c in class_columns if totals[c] > 0 and not has.loc[val, c].any()]
    if missing:
        warnings.append(f"classes absent from validation: {missing}")
    return frames["group"].isin(val).to_numpy(), warnings
