"""The paper's cohort analysis of a scores table: Figure 2's curves with 95% CIs, per-class tables, and the
per-class test of "no difference from the original".

Unit of analysis: the case. A curve point is the mean over cases of each case's mean over classes, with a
t-based 95% confidence interval across cases. Compression ratio is the parameter ratio (original / compressed;
for all experts together, the sum of their originals over the sum of their compressed parameters).

The test: per class and setting, a two-sided Wilcoxon signed-rank test paired by case, with Holm's
correction over the classes of each setting (statsmodels.stats.multitest). With ground truth it compares
NSD vs ground truth of the compressed expert with that of the original (the paper's question); without it,
NSD vs the original against 1 (does the compressed output differ from the original's at all). The paper
fitted a logistic mixed model on NSD; statsmodels has no frequentist logistic mixed model (only a
variational-Bayes one without p-values), and NSD is a bounded proportion piled at 1, so the paired
rank test, which assumes neither normality nor a link function, is the sound choice here. Its smallest
two-sided p with n cases is 2 / 2^n, so fewer than 6 cases can never reach p < 0.05.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from tuckerscope.core.cohorts.plan import ORIGINAL

ALL_EXPERTS = "all experts"
ALPHA = 0.05


def metrics_of(scores: pd.DataFrame) -> list[str]:
    """Dice and NSD vs the original, and vs ground truth when the cohort had any."""
    extra = ["dice_gt", "nsd_gt"] if len(scores) and scores["nsd_gt"].notna().any() else []
    return ["dice", "nsd", *extra]


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, lower, upper) of a t-based 95% interval; a single value has no interval (NaN bounds)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return mean, mean - half, mean + half


def curves(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (expert or all experts, method, setting): ratios, cases and mean/CI of every metric."""
    if scores.empty:
        return pd.DataFrame()
    frame = scores.assign(params_original=scores["params"] * scores["params_ratio"])
    rows = []
    groups = [(expert, part) for expert, part in frame.groupby("expert", sort=False)]
    if frame["expert"].nunique() > 1:
        groups.append((ALL_EXPERTS, frame))
    for expert, part in groups:
        for (method, setting), points in part.groupby(["method", "setting"], sort=False):
            sizes = points.drop_duplicates(["expert"])
            row = {
                "expert": expert,
                "method": method,
                "setting": setting,
                "df": float(points["df"].iloc[0]),
                "params_ratio": float(sizes["params_original"].sum() / max(sizes["params"].sum(), 1)),
                "cases": int(points["case"].nunique()),
            }
            per_case = points.groupby("case")[metrics_of(scores)].mean()
            for metric in per_case:
                row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = mean_ci(per_case[metric].to_numpy())
            rows.append(row)
    return pd.DataFrame(rows)


def per_class(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean of every metric per (expert, class, setting) over the cases that scored it."""
    if scores.empty:
        return pd.DataFrame()
    metrics = metrics_of(scores)
    table = scores.groupby(["expert", "class", "method", "setting"], sort=False).agg(
        df=("df", "first"), params_ratio=("params_ratio", "first"), cases=("case", "nunique"),
        **{m: (m, "mean") for m in metrics},
    )  # fmt: skip
    return table.reset_index()


def class_tests(scores: pd.DataFrame) -> pd.DataFrame:
    """Per class and compressed setting: Wilcoxon signed-rank p, Holm-adjusted within the setting."""
    from statsmodels.stats.multitest import multipletests

    if scores.empty:
        return pd.DataFrame()
    with_truth = "nsd_gt" in metrics_of(scores)
    metric = "nsd_gt" if with_truth else "nsd"
    rows = []
    originals = scores[scores["method"] == ORIGINAL].set_index(["expert", "class", "case"])[metric]
    compressed = scores[scores["method"] != ORIGINAL]
    for (expert, name, method, setting), part in compressed.groupby(
        ["expert", "class", "method", "setting"], sort=False
    ):
        values = part.set_index("case")[metric]
        if with_truth:
            reference = originals.reindex([(expert, name, c) for c in values.index]).to_numpy()
        else:
            reference = np.ones(len(values))
        pairs = np.column_stack([values.to_numpy(), reference])
        pairs = pairs[np.isfinite(pairs).all(axis=1)]
        rows.append(
            {
                "expert": expert,
                "class": name,
                "method": method,
                "setting": setting,
                "df": float(part["df"].iloc[0]),
                "cases": len(pairs),
                "reference": "original vs ground truth" if with_truth else "1 (identical to the original)",
                f"mean_{metric}": float(pairs[:, 0].mean()) if len(pairs) else math.nan,
                f"mean_{metric}_reference": float(pairs[:, 1].mean()) if len(pairs) else math.nan,
                "p": signed_rank_p(pairs[:, 0] - pairs[:, 1]),
            }
        )
    table = pd.DataFrame(rows)
    table["p_holm"] = math.nan
    for _, index in table.groupby("setting").groups.items():
        p = table.loc[index, "p"]
        valid = p.notna()
        if valid.any():
            table.loc[p[valid].index, "p_holm"] = multipletests(p[valid].to_numpy(), method="holm")[1]
    table["differs"] = table["p_holm"] < ALPHA
    return table


def signed_rank_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p (exact for small n); all-zero differences: no evidence, p = 1."""
    if differences.size == 0:
        return math.nan
    if np.allclose(differences, 0.0):
        return 1.0
    return float(stats.wilcoxon(differences, zero_method="zsplit").pvalue)
