"""Hyperparameter search for table agents (Optuna, TPE) on a study's train seeds only.

One search, used by ``agents/tune_table.py`` (one split, a resumable SQLite study) and by the
leaderboard's tuned rows (one search inside each fold's train seeds, so that no held-out seed
ever steers a choice). A trial trains ``trial_agents`` agents and scores their deterministic
policies on the train seeds: the objective is their mean return there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

NETS = {"small": [32], "medium": [64, 64], "large": [128, 128]}
TRIAL_SEED_BASE = 10_000  # trial agents' seeds: never a final agent's seed


def _common(trial) -> dict[str, Any]:
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
            "gamma": trial.suggest_categorical("gamma", [0.9, 0.99, 1.0]),
            "policy_kwargs": {"net_arch": NETS[trial.suggest_categorical("net", list(NETS))]}}


def sample_a2c(trial) -> dict[str, Any]:
    return {**_common(trial), "n_steps": trial.suggest_categorical("n_steps", [3, 6, 12, 24]),
            "ent_coef": trial.suggest_float("ent_coef", 1e-5, 0.1, log=True),
            "gae_lambda": trial.suggest_categorical("gae_lambda", [0.9, 0.95, 1.0]),
            "normalize_advantage": trial.suggest_categorical("normalize_advantage", [False, True])}


def sample_ppo(trial) -> dict[str, Any]:
    return {**_common(trial), "n_steps": trial.suggest_categorical("n_steps", [24, 48, 96, 192]),
            "batch_size": trial.suggest_categorical("batch_size", [8, 24]),
            "n_epochs": trial.suggest_categorical("n_epochs", [4, 10]),
            "ent_coef": trial.suggest_float("ent_coef", 1e-5, 0.1, log=True),
            "clip_range": trial.suggest_categorical("clip_range", [0.1, 0.2, 0.3]),
            "gae_lambda": trial.suggest_categorical("gae_lambda", [0.9, 0.95, 1.0])}


def sample_dqn(trial) -> dict[str, Any]:
    return {**_common(trial), "buffer_size": trial.suggest_categorical("buffer_size", [3000, 30000]),
            "learning_starts": trial.suggest_categorical("learning_starts", [100, 1000]),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
            "target_update_interval": trial.suggest_categorical("target_update_interval", [100, 1000]),
            "train_freq": trial.suggest_categorical("train_freq", [1, 3]),
            "exploration_fraction": trial.suggest_float("exploration_fraction", 0.05, 0.5),
            "exploration_final_eps": trial.suggest_categorical("exploration_final_eps", [0.01, 0.05, 0.1])}


SEARCH_SPACES = {"a2c": sample_a2c, "ppo": sample_ppo, "dqn": sample_dqn}


def tune(study_runner, defaults: dict[str, Any], algo: str, trials: int, trial_agents: int, seed: int = 0,
         storage: str | None = None, progress: bool = False,
         log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """Searches ``algo``'s space over ``defaults`` on ``study_runner``'s train seeds (a
    :class:`~kdenv.benchmark.study.TableStudy`; its episodes are each trial agent's budget).

    Returns the best trial's full hyperparameters and a record of the search. With ``storage`` (an
    Optuna URL, e.g. SQLite) a rerun adds trials up to ``trials`` in all; without it the study lives
    in memory. The sampler is seeded by ``seed`` and by the trials already held, so a resumed
    search continues instead of repeating itself."""
    import optuna

    if algo not in SEARCH_SPACES:
        raise ValueError(f"no search space for {algo!r}; tunable: {', '.join(SEARCH_SPACES)}")
    # Errors only: a failed trial raises out of the search anyway, and Ctrl-C would log each
    # interrupted trial's traceback as a warning before the program says how to resume.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sample = SEARCH_SPACES[algo]
    trial_seeds = [TRIAL_SEED_BASE + index for index in range(trial_agents)]

    def objective(trial) -> float:
        params = {**defaults, **sample(trial)}
        scores = [study_runner.score(study_runner.fit(params, agent_seed)[0], study_runner.train_seeds)
                  for agent_seed in trial_seeds]
        trial.set_user_attr("regret", float(np.mean([s["regret"] for s in scores])))
        return float(np.mean([s["test_return"] for s in scores]))

    study = optuna.create_study(study_name="tune", storage=storage, load_if_exists=True, direction="maximize")
    # A trial left RUNNING by a killed run never finishes: mark it failed (the sampler skips it).
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
        log(f"trial {stale.number} was cut short by an earlier run: marked failed, not counted")
    study.sampler = optuna.samplers.TPESampler(seed=seed + 100_003 * len(study.trials))
    done = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    if done < trials:
        log(f"tuning {algo}: {trials - done} trials ({done} done), {trial_agents} agents x "
            f"{study_runner.episodes} episodes each, on train seeds {study_runner.train_seeds}")
        study.optimize(objective, n_trials=trials - done, show_progress_bar=progress)
    best = study.best_trial
    record = {"trials": len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]),
              "best_trial": best.number, "train_return": float(best.value),
              "train_regret": float(best.user_attrs["regret"]), "params": best.params}
    return {**defaults, **sample(optuna.trial.FixedTrial(best.params))}, record
