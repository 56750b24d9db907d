"""Knowledge schedules: running a policy through an episode, recording what it chose, and
drawing and saving the schedule (knowledge types × phases)."""

from __future__ import annotations

import csv
import io
import json
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdenv.io import atomic_write


@dataclass
class EpisodeRecord:
    """One episode: per phase the action weights, rewards and reward-split metric."""

    policy: str
    seed: int
    knowledge: list[str]
    schedule: list[list[float]] = field(default_factory=list)  # [phase][type] weights
    rewards: list[float] = field(default_factory=list)
    task_rewards: list[float] = field(default_factory=list)
    metrics: list[float] = field(default_factory=list)
    status: str = "ok"
    wall_time_s: float = 0.0
    dev: dict[str, float] | None = None

    @property
    def episode_return(self) -> float:
        return float(sum(self.rewards))

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "return": self.episode_return}


def rollout(env, policy, deterministic: bool = True, **reset_kwargs):
    """The one episode loop: resets ``env`` (``reset_kwargs``: ``seed=``, ``options=``) and plays
    ``policy`` (anything with an SB3-style ``predict``, recurrent ones included) to the end,
    yielding ``(action, reward, info)`` after every step."""
    observation, _ = env.reset(**reset_kwargs)
    state, episode_start, done = None, np.ones((1,), dtype=bool), False
    while not done:
        action, state = policy.predict(observation, state=state, episode_start=episode_start, deterministic=deterministic)
        episode_start = np.zeros((1,), dtype=bool)
        observation, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        yield action, float(reward), info


def run_episode(env, policy, seed: int, policy_name: str = "", deterministic: bool = True,
                evaluate_dev: bool = False) -> EpisodeRecord:
    """Runs ``policy`` for one episode of ``env`` and records it.

    With ``evaluate_dev`` the final student is scored on GLUE dev afterwards; this happens
    outside the environment, whose rewards never see dev.
    """
    knowledge = env.unwrapped.knowledge  # `env` may be wrapped (e.g. MultiDiscreteOnOff)
    record = EpisodeRecord(policy_name or type(policy).__name__, seed, list(knowledge))
    start = time.perf_counter()
    for _, reward, info in rollout(env, policy, deterministic, seed=seed):
        record.schedule.append([info["action_weights"][name] for name in knowledge])
        record.rewards.append(reward)
        record.task_rewards.append(float(info["task_reward"]))
        record.metrics.append(float(info.get("metric", float("nan"))))
        if info["status"] != "ok":
            record.status = f"{info['status']}: {info.get('crash', '')}"
    record.wall_time_s = time.perf_counter() - start
    if evaluate_dev:
        record.dev = env.unwrapped.trainer.evaluate("dev")
    return record


def heatmap_figure(schedule: np.ndarray, knowledge: list[str], title: str = ""):
    """A knowledge × phase heatmap of weights in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schedule = np.asarray(schedule, dtype=np.float32).reshape(-1, len(knowledge))
    width = 1.2 + 0.5 * schedule.shape[0]
    lines = textwrap.wrap(title, width=int(width * 11)) if title else []  # ~11 characters per inch at 9 pt
    figure, axis = plt.subplots(figsize=(width, 0.8 + 0.45 * len(knowledge) + 0.15 * len(lines)))
    image = axis.imshow(schedule.T, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    axis.set_yticks(range(len(knowledge)), knowledge)
    axis.set_xticks(range(schedule.shape[0]), [str(i + 1) for i in range(schedule.shape[0])])
    axis.set_xlabel("phase")
    if lines:
        axis.set_title("\n".join(lines), fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.05)
    figure.tight_layout()
    return figure


def heatmap_png(schedule: np.ndarray, knowledge: list[str], title: str = "") -> bytes:
    import matplotlib.pyplot as plt

    figure = heatmap_figure(schedule, knowledge, title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def png_array(png: bytes) -> np.ndarray:
    """PNG bytes as an HWC uint8 RGB array (for TensorBoard images)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def heatmap_array(schedule: np.ndarray, knowledge: list[str], title: str = "") -> np.ndarray:
    """The heatmap as an HWC uint8 RGB array (for TensorBoard images)."""
    return png_array(heatmap_png(schedule, knowledge, title))


def save_records(records: list[EpisodeRecord], directory: Path, stem: str) -> None:
    """Writes episodes as JSON and as a long CSV (one row per episode × phase × type)."""
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_write(directory / f"{stem}.json") as handle:
        json.dump([record.as_dict() for record in records], handle, indent=2)
    with atomic_write(directory / f"{stem}.csv", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["policy", "seed", "phase", "knowledge", "weight", "reward", "metric"])
        for record in records:
            for phase, weights in enumerate(record.schedule):
                for name, weight in zip(record.knowledge, weights):
                    writer.writerow([record.policy, record.seed, phase + 1, name, weight,
                                     record.rewards[phase], record.metrics[phase]])
