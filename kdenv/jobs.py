"""Independent jobs (evaluation runs, subtrees of a schedule tree), run in this process by default
or as Ray tasks with ``--ray``: on a local Ray runtime over all local cores, or on an existing
cluster with ``--ray-address``.

Every task declares its resources (``num_cpus``, with torch set to that many threads inside the
task; ``num_gpus``, fractional on GPU machines) and is retried by Ray when its worker dies.
Jobs write their own results (atomically) where a rerun finds them, so a killed driver loses at
most the jobs in flight. Shared inputs (teacher, teacher-knowledge caches) are built by the driver
before any job starts and read by the workers from the shared runs folder, never pickled into
tasks.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kdenv.errors import KdenvError

ENV_PREFIXES = ("KDENV_",)  # environment variables every worker needs (runs folder, GLUE folder)


class JobError(KdenvError, RuntimeError):
    """A job runner that cannot start; the message says what to do."""


def add_job_arguments(add: Callable) -> None:
    """--ray, --ray-address, --cpus-per-job and --gpus-per-job, the same in every script."""
    add("--ray", action="store_true", help="run the jobs as Ray tasks (a local Ray runtime on all cores unless --ray-address)")
    add("--ray-address", default=None, help="join an existing Ray cluster at HOST:PORT (see README: ray start --head)")
    add("--cpus-per-job", type=float, default=1.0, help="CPUs each Ray task declares; torch uses that many threads (default 1)")
    add("--gpus-per-job", type=float, default=0.0, help="GPUs each Ray task declares, fractional allowed (default 0)")


def job_flags(args) -> list[str]:
    """The job arguments of ``args`` as command-line flags, to hand them on to another script."""
    return [*(["--ray"] if args.ray else []), *(["--ray-address", args.ray_address] if args.ray_address else []),
            "--cpus-per-job", str(args.cpus_per_job), "--gpus-per-job", str(args.gpus_per_job)]


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fails within seconds, with the fix, when nothing listens at a Ray cluster's HOST:PORT."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise JobError(f"--ray-address {address!r} must look like HOST:PORT (the address `ray start --head` prints)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise JobError(f"no Ray cluster answers at {address} ({error.strerror or error}); start one with "
                       f"`ray start --head` there, or drop --ray-address to use a local runtime") from None


def _with_threads(function: Callable[[Any], Any], job: Any, threads: int) -> Any:
    import torch

    torch.set_num_threads(max(1, threads))
    return function(job)


@dataclass(frozen=True)
class JobRunner:
    """Runs ``function(job)`` for every job: here, in order, or as Ray tasks."""

    ray: bool = False
    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 3

    @classmethod
    def from_args(cls, args) -> JobRunner:
        return cls(ray=bool(args.ray or args.ray_address), address=args.ray_address, num_cpus=args.cpus_per_job,
                   num_gpus=args.gpus_per_job)

    def check(self) -> None:
        """Everything that can be checked before any work: resources, the package, the cluster."""
        if self.num_cpus <= 0 or self.num_gpus < 0:
            raise JobError(f"--cpus-per-job must be > 0 and --gpus-per-job >= 0 (got {self.num_cpus}, {self.num_gpus})")
        if not self.ray:
            return
        try:
            import ray  # noqa: F401
        except ImportError:
            raise JobError("--ray needs Ray: pip install -e '.[ray]'") from None
        if self.address:
            check_reachable(self.address)

    def threads(self) -> int:
        """The torch threads a job computes with: the CPUs a Ray task declares (at least one), or
        this process's own setting when the jobs run here. Part of what keys a job's cached result."""
        if self.ray:
            return max(1, int(self.num_cpus))
        import torch

        return torch.get_num_threads()

    def map(self, function: Callable[[Any], Any], jobs: Sequence[Any],
            on_result: Callable[[Any, Any], None] | None = None) -> list[Any]:
        """The results in job order; ``on_result(job, result)`` is called as each one arrives."""
        if not self.ray:
            results = []
            for job in jobs:
                results.append(function(job))
                if on_result is not None:
                    on_result(job, results[-1])
            return results
        ray = self._connect()
        # The environment variables travel with every task (a worker pool per value), so workers
        # read the runs and GLUE folders this driver uses, whenever Ray was started.
        env_vars = {key: value for key, value in os.environ.items() if key.startswith(ENV_PREFIXES)}
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries,
                          retry_exceptions=False)(_with_threads).options(runtime_env={"env_vars": env_vars})
        pending = {task.remote(function, job, self.threads()): index for index, job in enumerate(jobs)}
        results: list[Any] = [None] * len(jobs)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            results[index] = ray.get(done[0])
            if on_result is not None:
                on_result(jobs[index], results[index])
        return results

    def _connect(self):
        import ray

        if ray.is_initialized():
            return ray
        if self.address:
            check_reachable(self.address)
            ray.init(address=self.address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
        return ray
