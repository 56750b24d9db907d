"""The tables shipped in kdenv/tables/: each loads through Gymnasium by name alone (task= for a
task's own table, table= for the others such as the GPU tables; no teacher, model or GLUE file
needed), passes both checkers, and holds a complete tree for every seed."""

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import kdenv
from kdenv.benchmark.table import available_tables, resolve_table
from kdenv.benchmark.tree import tree_size
from kdenv.engine.tasks import TASKS
from kdenv.paths import shipped_tables_dir

SHIPPED = available_tables()


def test_the_package_ships_tables():
    assert "stsb" in SHIPPED, f"expected a shipped STS-B table in {shipped_tables_dir()}"


def test_the_gpu_tables_ship_beside_the_cpu_ones():
    gpu = [name for name in SHIPPED if resolve_table(name).manifest["device"].startswith("cuda")]
    assert {"stsb_h100_u8", "stsb_h100_u16"} <= set(gpu), f"expected the H100 STS-B tables in {shipped_tables_dir()}"


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_table_works_from_gymnasium(name):
    where = {"task": name} if name in TASKS else {"table": name}
    env = gym.make(kdenv.TABLE_ENV_ID, **where)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    table = resolve_table(name)
    for seed in table.seeds:
        assert len(table.nodes[seed]) == tree_size(table.num_actions, table.phases) + 1
        assert all("dev" in leaf for leaf in table.leaves(seed))


def test_a_table_is_named_or_given_as_a_folder_and_an_unknown_name_lists_the_shipped_ones(tmp_path):
    from kdenv.benchmark.table import TableError, available_tables

    assert resolve_table(shipped_tables_dir() / "stsb").manifest == resolve_table("stsb").manifest
    with pytest.raises(TableError, match="name one of mrpc, ") as refused:
        resolve_table("no_such_table")
    assert {"mrpc", "stsb", "stsb_u8"} <= set(available_tables())
    assert all(name in str(refused.value) for name in available_tables())
    with pytest.raises(TableError, match="no table at"):
        resolve_table(tmp_path)


@pytest.mark.slow  # a subprocess
def test_the_evidence_build_script_builds_exactly_the_seeds_a_shipped_table_lacks(tmp_path):
    """bench/evidence_builds.sh's `unshipped` decides what `start` builds and whether `finish` may
    run: a table's range in the script minus the seeds of its shipped manifest. It must fail, not
    print nothing (which reads as 'all built'), when it cannot tell."""
    import os
    import re
    import subprocess
    import sys

    from kdenv.cli import parse_seeds
    from tests.conftest import REPO

    script = REPO / "bench" / "evidence_builds.sh"
    ranges = dict(re.findall(r'"(\w+)\|\$\w+\|([\d,-]+)"', script.read_text()))
    assert {"stsb_u8", "sst2_u8"} <= set(ranges), f"table ranges not found in {script}"

    def unshipped(name, python=sys.executable):
        env = {**os.environ, "PYTHON": python}
        return subprocess.run(["bash", str(script), "unshipped", name], capture_output=True, text=True, env=env,
                              cwd=tmp_path)

    for name in ("stsb_u8", "sst2_u8"):
        have = set(resolve_table(name).seeds)
        expected = [seed for seed in parse_seeds(ranges[name]) if seed not in have]
        done = unshipped(name)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == ",".join(map(str, expected))
    unknown = unshipped("no_such_table")
    assert unknown.returncode != 0 and "no table no_such_table" in unknown.stderr
    assert unshipped("sst2_u8", python="/bin/false").returncode != 0


def test_rewards_derived_at_load_reproduce_every_recorded_one_on_every_shipped_table():
    """A table stores RECORDED_REWARDS; a reward added since (teacher_agreement) is derived from each node
    and its parent when the table loads. The derivation, applied to the recorded ones, gives them back
    to the bit on every shipped table: so what it derives is what a build would have recorded."""
    from kdenv.benchmark.table import available_tables, resolve_table
    from kdenv.decision.rewards import RECORDED_REWARDS, REWARDS, RewardInput

    assert "teacher_agreement" in REWARDS and "teacher_agreement" not in RECORDED_REWARDS
    for name in available_tables():
        table = resolve_table(name)
        for nodes in table.nodes.values():
            root = nodes[()]
            for history, node in nodes.items():
                if not history or node.get("status") != "ok":
                    continue
                parent = nodes[history[:-1]]
                step = RewardInput(parent["metric"], node["metric"], parent["loss"], node["loss"], root["metric"],
                                   bool(node["terminal"]), parent["agreement"], node["agreement"])
                assert {r: REWARDS[r](step) for r in RECORDED_REWARDS} == {r: node["rewards"][r]
                                                                             for r in RECORDED_REWARDS}
                assert node["rewards"]["teacher_agreement"] == node["agreement"] - parent["agreement"]
