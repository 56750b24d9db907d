"""The tables shipped in benchmarks/: each loads through Gymnasium (by task name alone for
benchmarks/<task>, by path for the others such as the GPU tables; no teacher, model or GLUE file
needed), passes both checkers, and holds a complete tree for every seed."""

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import kdenv
from kdenv.benchmark.table import Table, benchmarks_dir
from kdenv.benchmark.tree import tree_size
from kdenv.engine.tasks import TASKS

SHIPPED = sorted(path.parent.name for path in benchmarks_dir().glob("*/manifest.json"))


def test_the_repository_ships_tables():
    assert "stsb" in SHIPPED, f"expected a shipped STS-B table in {benchmarks_dir()}"


def test_the_gpu_tables_ship_beside_the_cpu_ones():
    gpu = [name for name in SHIPPED if Table.load(benchmarks_dir() / name).manifest["device"].startswith("cuda")]
    assert {"stsb_h100_u8", "stsb_h100_u16"} <= set(gpu), f"expected the H100 STS-B tables in {benchmarks_dir()}"


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_table_works_from_gymnasium(name):
    where = {"task": name} if name in TASKS else {"table": str(benchmarks_dir() / name)}
    env = gym.make(kdenv.TABLE_ENV_ID, **where)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    table = Table.load(benchmarks_dir() / name)
    for seed in table.seeds:
        assert len(table.nodes[seed]) == tree_size(table.num_actions, table.phases) + 1
        assert all("dev" in leaf for leaf in table.leaves(seed))
