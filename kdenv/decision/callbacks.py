"""stable-baselines3 callbacks that make learned schedules visible in TensorBoard and on disk.

Per environment step: ``schedule/<type>`` (the weight chosen), ``reward/total``, ``reward/task``,
``reward/exploration_bonus``, ``reward_split/metric``, ``reward_split/loss``,
``reward_split/agreement`` and ``phase/wall_time_s``. Per episode: ``episode/return``,
``episode/final_metric`` and the image ``schedule/heatmap`` (types × phases). Episodes are also
written to ``schedules.json`` / ``schedules.csv`` in the log folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from kdenv.decision.schedules import EpisodeRecord, heatmap_array, save_records


class ScheduleCallback(BaseCallback):
    """``log_every``: write per-step scalars of one episode in this many (table agents run
    thousands of episodes); ``image_every`` (default: ``log_every``): the same for the heatmap
    image, which costs far more than a table episode. Every episode's schedule is still kept in
    the files."""

    def __init__(self, log_dir: Path, knowledge: list[str], save_every: int = 1, verbose: int = 0, log_every: int = 1,
                 image_every: int | None = None):
        super().__init__(verbose)
        self.log_dir, self.knowledge, self.save_every = Path(log_dir), list(knowledge), save_every
        self.log_every = max(1, log_every)
        self.image_every = max(1, image_every or self.log_every)
        self.writer = None
        self.records: list[EpisodeRecord] = []
        self._current: dict[int, EpisodeRecord] = {}

    def _on_training_start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir))

    def _on_step(self) -> bool:
        infos, dones, rewards = self.locals["infos"], self.locals["dones"], self.locals["rewards"]
        step = self.num_timesteps
        for index, info in enumerate(infos):
            if "action_weights" not in info:
                continue
            record = self._current.setdefault(index, EpisodeRecord("training", -1, self.knowledge))
            record.schedule.append([info["action_weights"][name] for name in self.knowledge])
            record.rewards.append(float(rewards[index]))
            record.task_rewards.append(float(info["task_reward"]))
            record.metrics.append(float(info.get("metric", np.nan)))
            if dones[index]:
                self._finish_episode(self._current.pop(index))
            if len(self.records) % self.log_every:
                continue
            for name in self.knowledge:
                self.writer.add_scalar(f"schedule/{name}", info["action_weights"][name], step)
            self.writer.add_scalar("reward/total", float(rewards[index]), step)
            self.writer.add_scalar("reward/task", info["task_reward"], step)
            self.writer.add_scalar("reward/exploration_bonus", info["exploration_bonus"], step)
            if "phase_wall_time_s" in info:
                self.writer.add_scalar("phase/wall_time_s", float(info["phase_wall_time_s"]), step)
            for key in ("metric", "loss", "agreement"):
                if key in info:
                    self.writer.add_scalar(f"reward_split/{key}", info[key], step)
        return True

    def _finish_episode(self, record: EpisodeRecord) -> None:
        episode = len(self.records)
        self.records.append(record)
        if episode % self.log_every == 0:
            self.writer.add_scalar("episode/return", record.episode_return, episode)
            self.writer.add_scalar("episode/final_metric", record.metrics[-1], episode)
        if episode % self.image_every == 0:
            image = heatmap_array(np.array(record.schedule), self.knowledge,
                                  f"episode {episode}: return {record.episode_return:.3f}")
            self.writer.add_image("schedule/heatmap", image, episode, dataformats="HWC")
            self.writer.flush()
        if episode % self.save_every == 0:
            save_records(self.records, self.log_dir, "schedules")

    def _on_training_end(self) -> None:
        save_records(self.records, self.log_dir, "schedules")
        self.writer.flush()


class AgentCheckpoint(BaseCallback):
    """Saves the agent (atomically) every ``every_episodes`` finished episodes, so that a killed or
    interrupted training run leaves an agent to evaluate or resume with ``--resume``."""

    def __init__(self, path: Path, every_episodes: int = 1, verbose: int = 0):
        super().__init__(verbose)
        self.path, self.every_episodes, self.episodes = Path(path), max(1, every_episodes), 0

    def _on_step(self) -> bool:
        finished = int(np.sum(self.locals["dones"]))
        if finished:
            before = self.episodes // self.every_episodes
            self.episodes += finished
            if self.episodes // self.every_episodes > before:
                from kdenv.decision.algorithms import save_agent

                save_agent(self.model, self.path)
        return True
