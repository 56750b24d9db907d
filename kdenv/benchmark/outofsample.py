"""Headroom chosen on one set of examples and scored on another, from a table's per-example outputs.

The hindsight oracle picks, per seed, the best of every schedule by the reward split and is scored
on the same examples: the best of 512 noisy values beats the best of 8 by about 1.6 noise standard
deviations with no real difference at all (the winner's curse). Here every choice (the oracle's
schedule per seed, the closed loop's, the best open-loop schedule and the best constant) is made on
one set of examples and scored on another:

- **cross-fitted**: the reward split's examples halved at random ``halvings`` times; choose on one
  half, score on the other, both ways; the mean over halvings. The same choices scored on the half
  they were made on give the in-sample figure at the same size, and their difference estimates
  the winner's curse;
- **reward → dev**: chosen on the whole reward split, scored on the dev examples (the figure an
  agent trained on the reward could bank on);
- **dev halves**: chosen on half of dev, scored on the other half: whether schedules differ on dev
  at all, whatever chooses them (analysis only; nothing may choose by dev).

Intervals are percentile bootstraps that resample seeds and examples together: each resample
draws seeds with replacement and the examples of each half with replacement (the same examples
for every seed: they share one reward split and one dev set), then chooses and scores again.

Scores are returns in reward units before scaling: metric_gain and final_metric, the metric's gain
over the initial student; loss_decrease, the loss's decrease; log_loss, its log's. A schedule that
crashed scores ``CRASH_RETURN`` on every set. On dev only the task's primary metric is scored (what
we care about), the final value (the initial student is not scored on dev; differences between
schedules of one seed do not need it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from kdenv.benchmark.oracle import CRASH_RETURN, all_sequences, closed_loop, constant_columns, solve
from kdenv.benchmark.outputs import OutputsError, labels_fingerprint
from kdenv.benchmark.table import Table
from kdenv.benchmark.tree import DevScoring
from kdenv.engine.tasks import TaskSpec, get_task
from kdenv.stats import percentile_interval

HALVINGS = 50
RESAMPLES = 200
SCORED_REWARDS = ("metric_gain", "final_metric", "loss_decrease", "log_loss", "teacher_agreement")
CHOICES = ("oracle", "closed_loop", "open_loop")
# What adapting to the seed adds over the best fixed schedule: these choices minus the best open-loop one,
# paired (the same seeds and examples in every draw), under "over_open_loop".
ADAPTIVE = ("oracle", "closed_loop")


@dataclass
class TableLabels:
    """The labels outputs are scored against: the reward split's and the scored dev examples'."""

    reward: np.ndarray
    dev: np.ndarray


def table_labels(manifest: dict[str, Any], data_dir: str | None = None) -> TableLabels:
    """Reads the labels of a table's reward split and scored dev examples from the GLUE files
    (``data_dir``, else ``$KDENV_GLUE_DIR``), carved as the table's data config says, and checks
    them against the fingerprints its build recorded."""
    from kdenv.config import DataConfig
    from kdenv.engine.data import load_raw_splits, split_indices

    recorded = manifest.get("outputs")
    if not recorded:
        raise OutputsError("this table keeps no per-example outputs (built before they were kept, or without "
                           "them); rebuild it with agents/build_tree.py to score it on other examples")
    config = DataConfig(**{**manifest["data"], "data_dir": data_dir})
    task = get_task(config.task)
    raw = load_raw_splits(task, config.data_dir)
    _, held_out = split_indices(task, config, raw["train"].labels)
    scoring = manifest["dev_scoring"]
    dev_indices = DevScoring(scoring["examples"], scoring["leaves"], scoring["seed"]).indices(len(raw["dev"]))
    labels = TableLabels(raw["train"].labels[held_out],
                         raw["dev"].labels if dev_indices is None else raw["dev"].labels[dev_indices])
    for split in ("reward", "dev"):
        found = labels_fingerprint(getattr(labels, split))
        if found != recorded["labels"][split]:
            raise OutputsError(f"the {split} labels read from the GLUE files (fingerprint {found}) are not those the "
                               f"table was built with ({recorded['labels'][split]}): point KDENV_GLUE_DIR (or "
                               "--data-dir) at the GLUE files the table was built from")
    return labels


# --------------------------------------------------------------------------- metrics, row by row


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean()
    denominator = np.sqrt((xc**2).sum(axis=-1) * (yc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (xc @ yc) / np.where(denominator > 0, denominator, 1.0), 0.0)


def _confusion(predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    positive, truth = predictions == 1, labels == 1
    tp = (positive & truth).sum(axis=-1).astype(np.float64)
    fp = (positive & ~truth).sum(axis=-1).astype(np.float64)
    fn = (~positive & truth).sum(axis=-1).astype(np.float64)
    tn = (~positive & ~truth).sum(axis=-1).astype(np.float64)
    return tp, fp, fn, tn


def metric_rows(task: TaskSpec, name: str, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One task metric (or ``loss``, the hard-label loss) of each row of ``outputs`` ([..., examples,
    columns]) against ``labels`` ([examples]): [...]. The definitions of kdenv.engine.metrics and of
    the trainer's loss, computed for many students at once."""
    outputs = np.asarray(outputs, dtype=np.float64)
    labels = np.asarray(labels)
    if name == "loss":
        if task.is_regression:
            return ((outputs[..., 0] - labels.astype(np.float64)) ** 2).mean(axis=-1)
        shifted = outputs - outputs.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return -log_probs[..., np.arange(len(labels)), labels.astype(np.int64)].mean(axis=-1)
    if task.is_regression:
        scores, truth = outputs[..., 0], labels.astype(np.float64)
        if name == "spearman":
            scores, truth = rankdata(scores, axis=-1), rankdata(truth)
        elif name != "pearson":
            raise ValueError(f"no metric {name!r} for a regression task")
        return _pearson_rows(scores, truth)
    predictions, truth = outputs.argmax(axis=-1), labels.astype(np.int64)
    if name == "accuracy":
        return (predictions == truth).mean(axis=-1)
    tp, fp, fn, tn = _confusion(predictions, truth)
    if name == "f1":
        denominator = 2 * tp + fp + fn
        return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0.0)
    if name == "matthews_corr":
        denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return np.where(denominator > 0, (tp * tn - fp * fn) / np.where(denominator > 0, denominator, 1), 0.0)
    raise ValueError(f"no metric {name!r} for a classification task")


def reward_score(task: TaskSpec, reward: str, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """What a reward's return telescopes to, as a function of one evaluation: the metric (metric_gain,
    final_metric), minus the loss (loss_decrease) or minus its log (log_loss). A return is this at
    the end minus this at the start."""
    if reward in ("metric_gain", "final_metric"):
        return metric_rows(task, task.primary_metric, outputs, labels)
    loss = metric_rows(task, "loss", outputs, labels)
    if reward == "loss_decrease":
        return -loss
    if reward == "log_loss":
        return -np.log(np.maximum(loss, 1e-12))
    raise ValueError(f"reward {reward!r} cannot be scored from outputs; use one of {', '.join(SCORED_REWARDS)}")


# --------------------------------------------------------------------------- a table's outputs, stacked


@dataclass
class StackedOutputs:
    """Every full schedule's outputs on every seed, stacked: ``reward`` [seeds, schedules, examples,
    columns] at the leaves and ``root`` [seeds, examples, columns] for the initial student, ``dev``
    [seeds, schedules, dev examples, columns] (None where a leaf was not scored on dev), and which
    schedules crashed ([seeds, schedules]). Crashed leaves hold zeros."""

    sequences: list[tuple[int, ...]]
    reward: np.ndarray
    root: np.ndarray
    dev: np.ndarray | None
    crashed: np.ndarray

    @classmethod
    def of(cls, table: Table) -> StackedOutputs:
        sequences = all_sequences(table)
        first = table.outputs(table.seeds[0])
        n_reward, columns = first.reward[()].shape
        dev_shape = next(iter(first.dev.values())).shape if first.dev else None
        reward = np.zeros((len(table.seeds), len(sequences), n_reward, columns), np.float32)
        dev = None if dev_shape is None else np.zeros((len(table.seeds), len(sequences), *dev_shape), np.float32)
        root = np.zeros((len(table.seeds), n_reward, columns), np.float32)
        crashed = np.zeros((len(table.seeds), len(sequences)), bool)
        for row, seed in enumerate(table.seeds):
            outputs = table.outputs(seed)
            root[row] = outputs.reward[()]
            for column, sequence in enumerate(sequences):
                if sequence not in outputs.reward:
                    crashed[row, column] = True
                    continue
                reward[row, column] = outputs.reward[sequence]
                if dev is not None:
                    if sequence not in outputs.dev:
                        dev = None  # not every leaf scored on dev: no dev figures from outputs
                    else:
                        dev[row, column] = outputs.dev[sequence]
        return cls(sequences, reward, root, dev, crashed)


@dataclass
class ReadOutputs:
    """A table's per-example outputs, stacked, and the labels they are scored against: read once and
    handed to every figure of the table (``read_outputs``). Both are None where the table keeps none
    or they cannot be scored (its labels unreadable, a file refused); ``resamples`` says what an
    interval over the table can then resample: "seeds, examples", else "seeds" and why."""

    labels: TableLabels | None
    stacked: StackedOutputs | None
    resamples: str


def read_outputs(table: Table, data_dir: str | None = None) -> ReadOutputs:
    """The table's outputs and labels (``table_labels``: ``data_dir``, else ``$KDENV_GLUE_DIR``), read
    once; where they cannot be read, None and the reason, so that figures fall back to seeds alone."""
    from kdenv.engine.data import DataError

    if not table.has_outputs:
        return ReadOutputs(None, None, "seeds")
    try:
        return ReadOutputs(table_labels(table.manifest, data_dir), StackedOutputs.of(table), "seeds, examples")
    except (OutputsError, DataError) as error:
        return ReadOutputs(None, None, f"seeds (examples not: {error})")


def _returns(task: TaskSpec, reward: str, stacked: StackedOutputs, labels: np.ndarray,
             examples: np.ndarray, teacher: np.ndarray | None = None) -> np.ndarray:
    """Each schedule's return on the reward-split ``examples`` (positions, repeats allowed): [seeds, schedules].
    ``teacher``: the teacher's reward-split outputs, which teacher_agreement reads instead of the labels."""
    if reward == "teacher_agreement":
        if teacher is None:
            raise ValueError("teacher_agreement needs the teacher's outputs on the reward split")
        final = teacher_agreement_score(task, stacked.reward[:, :, examples], teacher[examples])
        start = teacher_agreement_score(task, stacked.root[:, examples], teacher[examples])
    else:
        y = labels[examples]
        final = reward_score(task, reward, stacked.reward[:, :, examples], y)
        start = reward_score(task, reward, stacked.root[:, examples], y)
    return np.where(stacked.crashed, CRASH_RETURN, final - start[:, None])


def _dev_scores(task: TaskSpec, stacked: StackedOutputs, labels: np.ndarray, examples: np.ndarray) -> np.ndarray:
    """Each schedule's primary dev metric on the dev ``examples``: [seeds, schedules] (a crash: CRASH_RETURN)."""
    final = metric_rows(task, task.primary_metric, stacked.dev[:, :, examples], labels[examples])
    return np.where(stacked.crashed, CRASH_RETURN, final)


def dev_metric_draws(table: Table, labels: TableLabels, resamples: int = RESAMPLES, seed: int = 0,
                     stacked: StackedOutputs | None = None) -> list[np.ndarray]:
    """Every schedule's primary dev metric ([seeds, schedules], ``all_sequences`` order) on ``resamples``
    bootstrap resamples of the scored dev examples: what puts evaluation-set noise into an interval."""
    task, stacked = get_task(table.task), stacked or StackedOutputs.of(table)
    if stacked.dev is None:
        raise OutputsError("not every leaf of this table keeps dev outputs: no dev metric to resample")
    rng, n_dev = np.random.default_rng(seed), len(labels.dev)
    return [_dev_scores(task, stacked, labels.dev, rng.integers(n_dev, size=n_dev)) for _ in range(resamples)]


def choose(table: Table, sequences: list[tuple[int, ...]], returns: np.ndarray,
           rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every choice an out-of-sample figure scores, made on ``returns`` ([seeds, schedules]) of the
    seeds at ``rows`` (default all; repeats allowed, as a bootstrap draws them): per drawn seed the
    column of the oracle's schedule, the closed loop's, the best open-loop one and the best constant
    one (the last two the same for every seed)."""
    rows = np.arange(returns.shape[0]) if rows is None else np.asarray(rows)
    drawn = returns[rows]
    constants = constant_columns(table, sequences)
    best_constant = constants[int(np.argmax(drawn[:, constants].mean(axis=0)))]
    loop = closed_loop(table, sequences, returns, rows=[int(row) for row in rows])
    return {"oracle": drawn.argmax(axis=1), "closed_loop": np.asarray(loop["columns"]),
            "open_loop": np.full(len(rows), int(drawn.mean(axis=0).argmax())),
            "best_constant": np.full(len(rows), best_constant)}


def headrooms(choices: dict[str, np.ndarray], scores: np.ndarray) -> dict[str, np.ndarray]:
    """Per seed, each choice's score minus the best constant's, both on ``scores`` ([seeds, schedules])."""
    rows = np.arange(scores.shape[0])
    constant = scores[rows, choices["best_constant"]]
    return {name: scores[rows, choices[name]] - constant for name in CHOICES}


def _halves(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def _summary(per_seed: np.ndarray, draws: list[float], seeds: list[int]) -> dict[str, Any]:
    return {"mean": float(per_seed.mean()), "ci": percentile_interval(draws), "n": len(seeds),
            "per_seed": {int(seed): float(value) for seed, value in zip(seeds, per_seed)}}


def _over_open_loop(per_seed: dict[str, np.ndarray], draws: dict[str, list[float]], seeds: list[int]) -> dict[str, Any]:
    """Each adaptive choice minus the best open-loop schedule, per seed and in every draw (paired)."""
    return {name: _summary(per_seed[name] - per_seed["open_loop"],
                           [a - b for a, b in zip(draws[name], draws["open_loop"])], seeds) for name in ADAPTIVE}


def out_of_sample(table: Table, labels: TableLabels, reward: str = "metric_gain", halvings: int = HALVINGS,
                  resamples: int = RESAMPLES, seed: int = 0, stacked: StackedOutputs | None = None) -> dict[str, Any]:
    """The table's headroom over the best constant, chosen on one set of examples and scored on
    another (the module's docstring), for the oracle, the closed loop and the best open-loop
    schedule: cross-fitted on the reward split (with the in-sample figure at the same size and
    their difference, the winner's curse), reward → dev and dev halves where leaves hold dev
    outputs. Each with its mean over seeds and a 95% interval that resamples seeds and examples.
    Under ``over_open_loop``, by figure: the oracle's and the closed loop's gain over the best open-loop
    schedule (paired in every draw), what adapting to the seed adds over one fixed schedule."""
    if reward not in SCORED_REWARDS:
        raise ValueError(f"reward {reward!r} cannot be scored from outputs; use one of {', '.join(SCORED_REWARDS)}")
    task = get_task(table.task)
    stacked = stacked or StackedOutputs.of(table)
    if len(labels.reward) != stacked.reward.shape[2]:
        raise ValueError(f"{len(labels.reward)} reward-split labels for outputs on {stacked.reward.shape[2]} examples")
    rng = np.random.default_rng(seed)
    n_seeds, n_reward = len(table.seeds), len(labels.reward)
    sequences = stacked.sequences

    def crossfit(scores, first: np.ndarray, second: np.ndarray, rows: np.ndarray, sample: bool):
        """Choose on one half and score on the other, both ways (``scores(examples)``: [seeds,
        schedules]): per drawn seed, (out of sample, in sample); ``sample``: each half's examples
        drawn with replacement first."""
        out, inside = {name: 0.0 for name in CHOICES}, {name: 0.0 for name in CHOICES}
        for a, b in ((first, second), (second, first)):
            if sample:
                a, b = rng.choice(a, len(a)), rng.choice(b, len(b))
            on_a, on_b = scores(a), scores(b)
            choices = choose(table, sequences, on_a, rows)
            for name, value in headrooms(choices, on_b[rows]).items():
                out[name] = out[name] + value / 2
            for name, value in headrooms(choices, on_a[rows]).items():
                inside[name] = inside[name] + value / 2
        return out, inside

    teacher = StackedTeacher.of(table).reward if reward == "teacher_agreement" else None

    def on_reward(examples: np.ndarray) -> np.ndarray:
        return _returns(task, reward, stacked, labels.reward, examples, teacher)

    def on_dev(examples: np.ndarray) -> np.ndarray:
        return _dev_scores(task, stacked, labels.dev, examples)

    def halvings_and_draws(scores, n: int, with_inside: bool) -> dict[str, dict[str, Any]]:
        """The mean over ``halvings`` cross-fits of all seeds, and ``resamples`` bootstrap draws."""
        all_rows = np.arange(n_seeds)
        sums = {kind: {name: np.zeros(n_seeds) for name in CHOICES} for kind in ("out", "in")}
        for _ in range(halvings):
            out, inside = crossfit(scores, *_halves(rng, n), all_rows, sample=False)
            for name in CHOICES:
                sums["out"][name] += out[name] / halvings
                sums["in"][name] += inside[name] / halvings
        draws = {kind: {name: [] for name in CHOICES} for kind in ("out", "in", "curse")}
        for _ in range(resamples):
            rows = rng.integers(n_seeds, size=n_seeds)
            out, inside = crossfit(scores, *_halves(rng, n), rows, sample=True)
            for name in CHOICES:
                draws["out"][name].append(float(out[name].mean()))
                draws["in"][name].append(float(inside[name].mean()))
                draws["curse"][name].append(float((inside[name] - out[name]).mean()))
        result = {"crossfit": {name: _summary(sums["out"][name], draws["out"][name], table.seeds) for name in CHOICES},
                  "over_open_loop": _over_open_loop(sums["out"], draws["out"], table.seeds)}
        if with_inside:
            result["in_sample_half"] = {name: _summary(sums["in"][name], draws["in"][name], table.seeds)
                                        for name in CHOICES}
            result["winners_curse"] = {name: _summary(sums["in"][name] - sums["out"][name], draws["curse"][name],
                                                      table.seeds) for name in CHOICES}
        return result

    on_reward_halves = halvings_and_draws(on_reward, n_reward, with_inside=True)
    over_crossfit = on_reward_halves.pop("over_open_loop")
    result: dict[str, Any] = {"reward": reward, "halvings": halvings, "resamples": resamples,
                              "reward_examples": n_reward, "half_size": n_reward // 2, **on_reward_halves,
                              # what adapting to the seed adds over the best fixed schedule, by figure
                              "over_open_loop": {"crossfit": over_crossfit}}
    if stacked.dev is None:
        return result
    n_dev = len(labels.dev)
    if n_dev != stacked.dev.shape[2]:
        raise ValueError(f"{n_dev} dev labels for outputs on {stacked.dev.shape[2]} dev examples")
    everything, dev_all = np.arange(n_reward), np.arange(n_dev)
    to_dev = headrooms(choose(table, sequences, on_reward(everything)), on_dev(dev_all))
    to_dev_draws = {name: [] for name in CHOICES}
    for _ in range(resamples):
        rows = rng.integers(n_seeds, size=n_seeds)
        picked = choose(table, sequences, on_reward(rng.choice(everything, n_reward)), rows)
        for name, value in headrooms(picked, on_dev(rng.choice(dev_all, n_dev))[rows]).items():
            to_dev_draws[name].append(float(value.mean()))
    result["dev_examples"] = n_dev
    result["reward_to_dev"] = {name: _summary(to_dev[name], to_dev_draws[name], table.seeds) for name in CHOICES}
    result["over_open_loop"]["reward_to_dev"] = _over_open_loop(to_dev, to_dev_draws, table.seeds)
    on_dev_halves = halvings_and_draws(on_dev, n_dev, with_inside=False)
    result["dev_halves"] = on_dev_halves["crossfit"]
    result["over_open_loop"]["dev_halves"] = on_dev_halves["over_open_loop"]
    return result


# --------------------------------------------------------------------------- the reward as an instrument


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each row of ``a`` with the same row of ``b`` ([seeds, schedules])."""
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    return np.where(denominator > 0, (ra * rb).sum(axis=1) / np.where(denominator > 0, denominator, 1.0), np.nan)


def _defined_mean(values) -> float | None:
    """The mean of the defined (non-NaN) values; None where none is (every schedule tied)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def teacher_agreement_score(task: TaskSpec, outputs: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """Agreement with the teacher on the same examples (a candidate reward): the correlation of the
    scores for regression, the share of equal predicted labels for classification."""
    if task.is_regression:
        return _pearson_rows(np.asarray(outputs, np.float64)[..., 0], np.asarray(teacher, np.float64)[:, 0])
    return (np.asarray(outputs).argmax(axis=-1) == np.asarray(teacher).argmax(axis=-1)).mean(axis=-1)


CURVE_REWARDS = ("metric_gain", "loss_decrease", "log_loss", "teacher_agreement")


def reward_curve(table: Table, labels: TableLabels, sizes: list[int] | None = None, rewards=CURVE_REWARDS,
                 draws: int = 20, seed: int = 0, stacked: StackedOutputs | None = None) -> dict[str, Any]:
    """How well each reward ranks a seed's schedules as GLUE dev does, as the reward split grows.

    For each size n (default: 32, 64, ... up to the reward split) and reward: ``draws`` random
    subsets of n reward examples; per seed, Spearman's correlation over the schedules between the
    reward's return on the subset and the dev metric on every dev example (``agreement``), between
    the returns on two disjoint subsets of n (``reliability``, where 2n fit), and the gain on dev of
    the schedule the reward picks per seed over the constant it picks (``to_dev``); means over
    seeds and draws. Dev's own split-half reliability (two halves of dev) is the ceiling an
    agreement can reach (``dev_reliability``)."""
    task = get_task(table.task)
    stacked = stacked or StackedOutputs.of(table)
    if stacked.dev is None:
        raise ValueError("the reward curve needs dev outputs at every leaf; this table scored only some leaves on dev")
    n_reward, rng = len(labels.reward), np.random.default_rng(seed)
    sizes = sizes or [n for n in (16, 32, 64, 128, 256, 512, 1024) if n <= n_reward]
    teacher = StackedTeacher.of(table)
    dev_all = _dev_scores(task, stacked, labels.dev, np.arange(len(labels.dev)))
    dev_halves = []
    for _ in range(draws):
        a, b = _halves(rng, len(labels.dev))
        dev_halves.append(_defined_mean(_spearman_rows(_dev_scores(task, stacked, labels.dev, a),
                                                       _dev_scores(task, stacked, labels.dev, b))))

    def returns(reward: str, examples: np.ndarray) -> np.ndarray:
        return _returns(task, reward, stacked, labels.reward, examples, teacher.reward)

    rows = []
    for reward in rewards:
        for n in sizes:
            agreement, reliability, to_dev = [], [], []
            for _ in range(draws):
                order = rng.permutation(n_reward)
                first = returns(reward, order[:n])
                agreement.append(_defined_mean(_spearman_rows(first, dev_all)))
                if 2 * n <= n_reward:
                    reliability.append(_defined_mean(_spearman_rows(first, returns(reward, order[n: 2 * n]))))
                to_dev.append(float(headrooms(choose(table, stacked.sequences, first), dev_all)["oracle"].mean()))
            defined = [value for value in agreement if value is not None]
            rows.append({"reward": reward, "examples": n, "agreement": _defined_mean(defined) if defined else None,
                         "agreement_ci": percentile_interval(defined) if defined else None,
                         "reliability": _defined_mean([v for v in reliability if v is not None] or [np.nan]),
                         "to_dev": float(np.mean(to_dev)), "to_dev_ci": percentile_interval(to_dev)})
    return {"table": table.name, "seeds": len(table.seeds), "draws": draws, "reward_examples": n_reward,
            "dev_examples": len(labels.dev), "rows": rows,
            "dev_reliability": _defined_mean([v for v in dev_halves if v is not None] or [np.nan])}


@dataclass
class StackedTeacher:
    """The teacher's outputs on the reward split and the dev examples (the same for every seed)."""

    reward: np.ndarray
    dev: np.ndarray | None

    @classmethod
    def of(cls, table: Table) -> StackedTeacher:
        outputs = table.outputs(table.seeds[0]).teacher
        if "reward" not in outputs:
            raise ValueError("the table's outputs hold no teacher outputs on the reward split")
        return cls(np.asarray(outputs["reward"], np.float32), outputs.get("dev"))


def reward_to_dev(table: Table, reward: str = "metric_gain",
                  read: ReadOutputs | None = None) -> tuple[dict[str, Any] | None, str]:
    """The out-of-sample headroom the leaderboard's summary and the glance lead with (the reward's choices scored on GLUE dev), and
    what its intervals resample: seeds and examples on a table that keeps per-example outputs (whose
    labels are read from $KDENV_GLUE_DIR), seeds only otherwise (or where the labels cannot be read).
    ``read``: the table's outputs, read once by the caller (default: read here)."""
    read = read or read_outputs(table)
    if read.stacked is None:
        return solve(table, reward)["reward_to_dev"], read.resamples
    if read.stacked.dev is None:  # outputs kept, but not every leaf scored on dev
        return solve(table, reward)["reward_to_dev"], "seeds (examples not: not every leaf keeps dev outputs)"
    return with_adapting(out_of_sample(table, read.labels, reward, stacked=read.stacked)), read.resamples


def with_adapting(result: dict[str, Any]) -> dict[str, Any]:
    """An ``out_of_sample`` result's reward → dev figures, with what adapting to the seed adds over the best
    open-loop schedule (the oracle's, paired) under "adapting", as ``oracle.solve`` gives them."""
    return {**result["reward_to_dev"], "adapting": result["over_open_loop"]["reward_to_dev"]["oracle"]}
