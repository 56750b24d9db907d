"""`pip install .` (a wheel, not an editable checkout) gives a working kdenv: what the library
reads at run time (the schedule tables, the algorithms' default hyperparameters) ships inside the
package, and nothing looks for the repository's folders.

The wheel is built from this checkout and installed into a folder of its own; a fresh Python
then runs with that folder first on its path, from a directory outside the repository, so that
the import can only come from the wheel (checked). The dependencies come from this environment."""

import json
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

PROBE = """
import json, sys
import gymnasium as gym
import kdenv
from kdenv.decision.algorithms import load_hyperparams
from kdenv.paths import hyperparams_dir, shipped_tables_dir

env = gym.make(kdenv.TABLE_ENV_ID, task="stsb")
observation, info = env.reset(seed=0)
_, reward, terminated, _, _ = env.step(env.action_space.sample())
gpu_table = gym.make(kdenv.TABLE_ENV_ID, table="stsb_h100_u8").unwrapped.table
print(json.dumps({"kdenv": kdenv.__file__, "tables": str(shipped_tables_dir()), "hyperparams": str(hyperparams_dir()),
                  "table_seed": info["table_seed"], "reward": reward, "gpu_table_seeds": gpu_table.seeds,
                  "a2c": load_hyperparams("a2c").as_dict(), "dqn_policy": load_hyperparams("dqn").policy}))
"""


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(root / "dist"), str(REPO)], check=True, capture_output=True, text=True)
    (wheel,) = (root / "dist").glob("kdenv-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(root / "site"),
                    str(wheel)], check=True, capture_output=True, text=True)
    return wheel, root


def test_the_wheel_holds_the_tables_and_hyperparameters_and_stays_small(wheel_install):
    wheel, _ = wheel_install
    names = zipfile.ZipFile(wheel).namelist()
    assert "kdenv/tables/stsb/manifest.json" in names and "kdenv/tables/stsb/seed0.jsonl.gz" in names
    assert "kdenv/decision/hyperparams/a2c.yaml" in names
    assert "kdenv/engine/glue.yaml" in names  # the GLUE task specs
    assert not [name for name in names if name.startswith(("tests/", "agents/", "docs/", "bench/"))]
    assert wheel.stat().st_size < 20 * 2**20  # tables are a few MB


def test_a_wheel_install_makes_the_table_env_and_reads_default_hyperparameters(wheel_install):
    _, root = wheel_install
    outside = root / "elsewhere"
    outside.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root / "site"), "HOME": str(outside)}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=outside, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("kdenv", "tables", "hyperparams"):
        assert found[key].startswith(str(root / "site")), (key, found[key])  # the wheel's copy, not the checkout
    assert found["table_seed"] in (0, 1, 2, 3) and isinstance(found["reward"], float)
    assert found["gpu_table_seeds"] == [0, 1, 2, 3]
    assert found["a2c"]["policy"] == "MlpPolicy" and "learning_rate" in found["a2c"] and found["dqn_policy"] == "MlpPolicy"


def test_the_console_scripts_are_declared():
    """pip installs `kdenv-train`, `kdenv-oracle`, ... from [project.scripts]; each names a real main."""
    import importlib

    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"kdenv-train", "kdenv-train-table", "kdenv-oracle", "kdenv-evaluate"} <= set(scripts)
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target
