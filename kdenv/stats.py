"""Confidence intervals for the benchmark's figures: the two-level percentile bootstrap (seeds,
then agent seeds within each), the interquartile mean, the probability of improvement and paired
differences. Used by the table protocol (``protocol.py``), the oracle report, the live check and
``agents/evaluate.py``; the reasons for this scheme are in ``protocol.py``'s docstring.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 5000


def iqm(values) -> float:
    """The interquartile mean: the mean of the middle 50% (scipy's 25%-trimmed mean)."""
    return float(stats.trim_mean(np.asarray(values, dtype=np.float64).ravel(), 0.25))


def _row_iqm(values: np.ndarray) -> np.ndarray:
    """The IQM of each row, NaNs left out (as scipy's trim_mean on each row's valid values)."""
    ordered = np.sort(values, axis=1)  # NaNs last
    counts = (~np.isnan(values)).sum(axis=1)
    low = (0.25 * counts).astype(np.int64)
    high = counts - low
    sums = np.concatenate([np.zeros((len(values), 1)), np.nancumsum(ordered, axis=1)], axis=1)
    rows = np.arange(len(values))
    return (sums[rows, high] - sums[rows, low]) / np.maximum(high - low, 1)


def _groups(per_seed) -> list[np.ndarray]:
    """Each seed's values as a flat float array, NaNs dropped."""
    groups = [np.asarray(values, dtype=np.float64).ravel() for values in per_seed]
    return [values[~np.isnan(values)] for values in groups]


def _padded(groups: list[np.ndarray]) -> np.ndarray:
    """Each seed's values in one row, NaN-padded to the longest: [seeds, width]."""
    padded = np.full((len(groups), max(len(values) for values in groups)), np.nan)
    for row, values in enumerate(groups):
        padded[row, : len(values)] = values
    return padded


def _draw_indices(sizes: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two-level bootstrap's draws, every resample at once: the seeds each resample draws
    ([resamples, seeds]), the positions drawn within each drawn seed ([resamples, seeds, width]) and
    which of those positions are real (not padding)."""
    rng = np.random.default_rng(seed)
    width = int(sizes.max())
    chosen = rng.integers(len(sizes), size=(resamples, len(sizes)))
    counts = sizes[chosen]
    within = (rng.random((resamples, len(sizes), width)) * counts[..., None]).astype(np.int64)
    return chosen, within, np.arange(width)[None, None, :] < counts[..., None]


def _two_level_draws(groups: list[np.ndarray], resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The two-level bootstrap, every resample at once: which seeds each resample draws
    ([resamples, seeds]) and the agent-seed values drawn within them ([resamples, values], NaN-padded)."""
    chosen, within, real = _draw_indices(np.array([len(values) for values in groups]), resamples, seed)
    draws = _padded(groups)[chosen[..., None], within]
    return chosen, np.where(real, draws, np.nan).reshape(resamples, -1)


def bootstrap_interval_with_examples(per_draw: list[list[np.ndarray]], seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the pooled mean under a three-level bootstrap: resample r takes the
    values computed on its own resample of the evaluation examples (``per_draw[r]``: per seed, the
    values over agent seeds), then draws seeds, and agent seeds within them, as
    :func:`bootstrap_interval` does (the same draws). So evaluation-set noise enters the interval too."""
    groups = [_groups(draw) for draw in per_draw]
    sizes = np.array([len(values) for values in groups[0]])
    if any([len(values) for values in draw] != sizes.tolist() for draw in groups):
        raise ValueError("every example draw must hold the same seeds and agent seeds (a value went undefined)")
    resamples = len(groups)
    chosen, within, real = _draw_indices(sizes, resamples, seed)
    stacked = np.stack([_padded(draw) for draw in groups])  # [resamples, seeds, width]
    draws = stacked[np.arange(resamples)[:, None, None], chosen[..., None], within]
    return percentile_interval(np.nanmean(np.where(real, draws, np.nan).reshape(resamples, -1), axis=1))


def percentile_interval(values) -> tuple[float, float]:
    """The central 95% of bootstrap draws (or of any sample of an estimate)."""
    low, high = np.quantile(values, [(1 - CONFIDENCE) / 2, 1 - (1 - CONFIDENCE) / 2])
    return float(low), float(high)


def bootstrap_interval(per_seed: list[np.ndarray], statistic: str = "mean", resamples: int = RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of ``statistic`` ("mean" or "iqm", of the pooled values) under the
    two-level bootstrap: held-out seeds resampled, then the agent seeds' values within each drawn
    seed. Vectorised: every resample at once."""
    groups = [values for values in _groups(per_seed) if len(values)]
    if not groups:
        return float("nan"), float("nan")
    _, draws = _two_level_draws(groups, resamples, seed)
    return percentile_interval(np.nanmean(draws, axis=1) if statistic == "mean" else _row_iqm(draws))


def bootstrap_ratio(per_seed: list[np.ndarray], denominators: list[float], resamples: int = RESAMPLES,
                    seed: int = 0) -> dict[str, Any]:
    """The ratio of the pooled mean of ``per_seed``'s values to the mean of one ``denominators``
    value per seed (weighted as the values are: by each seed's number of values), with its
    two-level bootstrap 95% interval, numerator and denominator drawn on the same seeds.

    For "what share of a headroom does a policy capture": per_seed holds its gains over a baseline,
    denominators the headroom of each seed over the same baseline. The ratio is undefined (None)
    where the headroom's mean is not positive. Resamples that draw seeds without headroom have no
    ratio: they count beyond both ends of the interval, which is None (unbounded) when they are
    more than 2.5% of the resamples."""
    pairs = [(values, float(d)) for values, d in zip(_groups(per_seed), denominators, strict=True)
             if len(values) and not np.isnan(d)]
    if not pairs:
        return {"value": None, "ci": None, "n": 0}
    groups, dens = [values for values, _ in pairs], np.array([d for _, d in pairs])
    sizes = np.array([len(values) for values in groups], dtype=np.float64)
    n = int(sizes.sum())
    denominator = float((sizes * dens).sum() / sizes.sum())
    if denominator <= 1e-12:
        return {"value": None, "ci": None, "n": n}
    chosen, draws = _two_level_draws(groups, resamples, seed)
    drawn = (sizes[chosen] * dens[chosen]).sum(axis=1) / sizes[chosen].sum(axis=1)
    ratios = np.nanmean(draws, axis=1) / np.where(drawn > 1e-12, drawn, 1.0)
    undefined = drawn <= 1e-12  # resamples that drew no headroom: counted beyond both ends (conservative)
    with np.errstate(invalid="ignore"):  # interpolating next to an infinite draw gives NaN: unbounded
        low = np.quantile(np.where(undefined, -np.inf, ratios), (1 - CONFIDENCE) / 2)
        high = np.quantile(np.where(undefined, np.inf, ratios), 1 - (1 - CONFIDENCE) / 2)
    interval = (float(low), float(high)) if np.isfinite([low, high]).all() else None
    return {"value": float(np.concatenate(groups).mean() / denominator), "ci": interval, "n": n}


def summarise(per_seed: list[np.ndarray]) -> dict[str, Any]:
    """Mean and IQM of the pooled values with their bootstrap intervals, and how many values."""
    groups = _groups(per_seed)
    pooled = np.concatenate(groups) if groups else np.zeros(0)
    if not len(pooled):
        return {"mean": None, "mean_ci": None, "iqm": None, "iqm_ci": None, "n": 0}
    return {"mean": float(pooled.mean()), "mean_ci": bootstrap_interval(groups, "mean"),
            "iqm": iqm(pooled), "iqm_ci": bootstrap_interval(groups, "iqm"), "n": int(len(pooled))}


def over_seeds(values) -> dict[str, Any]:
    """One value per seed, given in the table's seed order: mean, std, the percentile bootstrap 95%
    interval of the mean (seeds resampled) and the number of seeds. The protocol's scores
    (``protocol.score_policy``) resample the same seeds in the same order, so a headroom has one
    interval wherever it is printed."""
    values = np.asarray(values, dtype=np.float64)
    return {**mean_std(values), "ci": bootstrap_interval([[value] for value in values]), "n": int(len(values))}


def mean_std(values) -> dict[str, float]:
    """Mean and sample std of one value per seed (std 0 for a single seed): a spread, not an interval."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}


def paired_difference(scores: dict[int, float], reference: dict[int, float]) -> dict[str, Any]:
    """``scores[seed] - reference[seed]`` over the seeds both hold: mean, bootstrap 95% interval
    (seeds resampled), sample std and the number of seeds.

    Seeds fix data order and dropout, so two policies run on one seed share much of their luck;
    differencing per seed removes that shared part, which the spread of each policy alone does
    not. Seeds where either value is undefined (NaN) are left out."""
    seeds = [seed for seed in sorted(set(scores) & set(reference))
             if not (np.isnan(scores[seed]) or np.isnan(reference[seed]))]
    if not seeds:
        raise ValueError("no seed in common: a paired difference needs both policies run on the same seeds")
    differences = np.array([scores[seed] - reference[seed] for seed in seeds], dtype=np.float64)
    return {"mean": float(differences.mean()), "ci": bootstrap_interval([[d] for d in differences], "mean"),
            "std": float(differences.std(ddof=1)) if len(seeds) > 1 else 0.0, "n": len(seeds)}


def improvement(per_seed_gains: list[np.ndarray]) -> dict[str, Any]:
    """P(policy beats the best constant): wins count 1, ties 1/2, with its bootstrap interval."""
    scores = [np.where(np.isclose(g, 0.0, atol=1e-12), 0.5, (np.asarray(g) > 0).astype(float)) for g in per_seed_gains]
    pooled = np.concatenate([s.ravel() for s in scores])
    return {"value": float(pooled.mean()), "ci": bootstrap_interval(scores, "mean"), "n": int(len(pooled))}


def with_interval(value: float | None, interval, digits: int = 4, signed: bool = True) -> str:
    """The one way kdenv prints a figure with its 95% interval: ``+0.0123 [+0.0010, +0.0240]``
    ("n/a" without a value, "[unbounded]" without an interval)."""
    if value is None:
        return "n/a"
    number = f"{{:{'+' if signed else ''}.{digits}f}}".format
    if interval is None:
        return f"{number(value)} [unbounded]"
    return f"{number(value)} [{number(interval[0])}, {number(interval[1])}]"


def ci_text(summary: dict[str, Any] | None, key: str = "mean", digits: int = 4) -> str:
    """A summary's statistic (``summarise``'s "mean" or "iqm"; or an estimate's "value" with its
    "ci") with its interval."""
    if not summary:
        return "n/a"
    if key not in summary and "value" in summary:
        return with_interval(summary["value"], summary["ci"], digits)
    interval = summary.get(f"{key}_ci", summary.get("ci"))
    return with_interval(summary.get(key), interval, digits)


def improvement_text(chance: dict[str, Any]) -> str:
    """A probability of improvement with its interval (``improvement``'s result)."""
    return with_interval(chance["value"], chance["ci"], digits=2, signed=False)


def share_text(share: dict[str, Any] | None) -> str:
    """A share of the closed-loop headroom (``bootstrap_ratio``'s result) with its interval."""
    if not share or share["value"] is None:
        return "n/a (no headroom)"
    return with_interval(share["value"], share["ci"], digits=2)


def seeds_text(seeds: list[int]) -> str:
    """``seeds 0-3``, ``seeds 0, 2, 5`` or ``seed 4``: how reports name a seed list."""
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))
