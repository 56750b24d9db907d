import pytest
import torch

from kdenv.config import DataConfig, FinetuneConfig, from_dict, load_run_config, save_run_config
from kdenv.engine.runtime import make_runtime, seed_everything
from kdenv.io import atomic_write


def test_cpu_runtime_defaults_to_fp32_and_refuses_fp16():
    runtime = make_runtime("cpu")
    assert runtime.device.type == "cpu" and runtime.precision == "fp32"
    assert runtime.autocast_dtype is None and not runtime.grad_scaler().is_enabled()
    with pytest.raises(ValueError, match="fp16 mixed precision needs CUDA"):
        make_runtime("cpu", "fp16")
    with pytest.raises(ValueError, match="unknown precision"):
        make_runtime("cpu", "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            make_runtime("cuda")
    assert make_runtime("cpu", "bf16").autocast_dtype == torch.bfloat16


def test_seeding_repeats_random_draws():
    seed_everything(7)
    first = torch.rand(3)
    seed_everything(7)
    assert torch.equal(first, torch.rand(3))


def test_run_config_round_trips_with_seeds_and_versions(tmp_path):
    data, tune = DataConfig(task="mrpc", reward_size=100), FinetuneConfig(epochs=2)
    path = save_run_config(tmp_path / "config.yaml", {"train": 3}, data=data, finetune=tune)
    loaded = load_run_config(path, data=DataConfig, finetune=FinetuneConfig)
    assert loaded == {"data": data, "finetune": tune}
    text = path.read_text()
    assert "seeds:" in text and "torch:" in text


def test_unknown_config_keys_are_refused():
    with pytest.raises(ValueError, match="unknown DataConfig keys \\['taks'\\]"):
        from_dict(DataConfig, {"taks": "rte"})


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("new, half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_numpy_numbers_are_numbers_and_booleans_are_refused_wherever_a_number_is_meant():
    import numpy as np
    import pytest

    from kdenv.config import ConfigError, DataConfig, DistillConfig, EnvConfig

    env = EnvConfig(phases=np.int64(3), updates_per_phase=np.int32(8))
    assert env.phases == 3 and type(env.phases) is int and type(env.updates_per_phase) is int
    assert DataConfig(max_reward_examples=np.int64(128), reward_size=np.float64(0.1)).max_reward_examples == 128
    for make, field in ((EnvConfig, "phases"), (EnvConfig, "updates_per_phase"), (DistillConfig, "student_layers"),
                        (DataConfig, "max_reward_examples"), (DataConfig, "max_length")):
        with pytest.raises(ConfigError, match=field):
            make(**{field: True})
        with pytest.raises(ConfigError, match=field):
            make(**{field: np.bool_(True)})


def test_a_bad_number_is_one_clear_error_not_a_traceback_deep_inside(capsys):
    import pytest

    import kdenv  # noqa: F401
    from kdenv.benchmark.table import resolve_table
    from kdenv.benchmark.table_env import KnowledgeSelectionTableEnv
    from tests.conftest import command

    table = resolve_table("stsb")
    for value in ("x", None, float("nan"), True):
        with pytest.raises(ValueError, match="reward_scale must be a finite number"):
            KnowledgeSelectionTableEnv(table, reward_scale=value)
    assert command("build_tree").main(["--task", "stsb", "--threads", "-2", "--estimate"]) == 2
    assert "--threads -2: give a whole number of torch threads >= 1" in capsys.readouterr().err


# ------------------------------------------------------------------ budget fields named for what they count


def test_renamed_budget_fields_read_old_records_and_warn_only_where_a_user_wrote_them():
    """EnvConfig.epochs is episode_epochs and DistillConfig.epochs is distill_epochs. A record written
    before (a table manifest, a run's config.yaml) reads back silently; a dict a user passes to
    gymnasium.make says, in one line, that the name changed; both names at once are refused."""
    import warnings

    from kdenv.config import ConfigError, DistillConfig, EnvConfig, from_dict

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a record read back must not warn
        assert from_dict(EnvConfig, {"epochs": 2.0}).episode_epochs == 2.0
        assert from_dict(DistillConfig, {"epochs": 5.0}).distill_epochs == 5.0
    with pytest.warns(DeprecationWarning, match="'epochs' is now 'episode_epochs'"):
        assert from_dict(EnvConfig, {"epochs": 2.0}, warn_renamed=True).episode_epochs == 2.0
    with pytest.raises(ConfigError, match="both 'epochs' and its new name 'episode_epochs'"):
        from_dict(EnvConfig, {"epochs": 2.0, "episode_epochs": 3.0})


def test_a_table_shipped_under_the_old_names_is_the_same_setup_as_a_build_today():
    """Table manifests written before the renames say distill.epochs and env.epochs: compared with a build
    today they are the same setup (the work folders' keys: tests/test_regimes.py)."""
    from kdenv.benchmark.build import canonical_sections, setup_differences
    from kdenv.config import DistillConfig, EnvConfig, to_dict

    new = {"distill": to_dict(DistillConfig()), "env": to_dict(EnvConfig())}
    old = {"distill": {("epochs" if k == "distill_epochs" else k): v for k, v in new["distill"].items()},
           "env": {("epochs" if k == "episode_epochs" else k): v for k, v in new["env"].items()}}
    assert old != new and canonical_sections(old) == new
    assert not [d for d in setup_differences(old, new) if d in ("distill", "env")]
    changed = {**new, "env": {**new["env"], "episode_epochs": 2.0}}
    assert "env" in setup_differences(old, changed)
