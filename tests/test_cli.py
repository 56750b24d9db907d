"""The command-line scripts, run as a user would (tiny models where training is involved)."""

import json
import subprocess
import sys

import pytest

from kdenv.engine.models import save_model
from kdenv.engine.teacher import load_teacher
from tests.conftest import REPO, command


@pytest.mark.slow  # a subprocess
def test_finetune_teacher_help_explains_every_flag():
    result = subprocess.run([sys.executable, str(REPO / "agents" / "finetune_teacher.py"), "--help"],
                            capture_output=True, text=True, check=True)
    for flag in ("--task", "--data-dir", "--model", "--epochs", "--select-on", "--device", "--precision", "--force"):
        assert flag in result.stdout


def test_finetune_teacher_saves_a_reusable_teacher(tmp_path, glue_dir, tokenizer, tiny_bert_factory, capsys, private_runs_dir):
    base = tmp_path / "tiny_base"
    save_model(tiny_bert_factory(layers=2), tokenizer, base, {})
    script = command("finetune_teacher")
    args = ["--task", "wnli", "--data-dir", str(glue_dir), "--model", str(base), "--epochs", "1",
            "--max-steps", "3", "--no-progress"]
    assert script.main(args) == 0
    saved = private_runs_dir / "teachers" / "wnli"
    metadata = json.loads((saved / "kdenv.json").read_text())
    assert metadata["steps"] == 3 and metadata["split_sizes"] == {"train": 571, "reward": 64, "dev": 71}
    assert "seeds:" in (saved / "config.yaml").read_text()
    model, _, loaded = load_teacher("wnli")
    assert model.config.num_hidden_layers == 2 and loaded["dev"] == metadata["dev"]
    capsys.readouterr()
    assert script.main(args) == 0  # a second call reuses the teacher
    assert "already at" in capsys.readouterr().out


def test_a_teacher_on_a_capped_train_split_keeps_the_reward_split_and_says_so(tmp_path, glue_dir, tokenizer,
                                                                              tiny_bert_factory, private_runs_dir):
    """SST-2's 67k examples make a full teacher cost hours here: --max-train-examples caps what the
    teacher trains on, leaves the reward split (and so every student's) as it is, and every run
    built on that teacher records the cap."""
    from kdenv.config import DataConfig, DistillConfig
    from kdenv.engine.distillation import prepare_distillation
    from kdenv.engine.runtime import make_runtime

    base = tmp_path / "tiny_base"
    save_model(tiny_bert_factory(layers=2), tokenizer, base, {})
    assert command("finetune_teacher").main(
        ["--task", "wnli", "--data-dir", str(glue_dir), "--model", str(base), "--epochs", "1", "--max-steps", "2",
         "--max-train-examples", "100", "--no-progress"]) == 0
    metadata = json.loads((private_runs_dir / "teachers" / "wnli" / "kdenv.json").read_text())
    assert metadata["split_sizes"] == {"train": 100, "reward": 64, "dev": 71}
    assert metadata["data"]["max_train_examples"] == 100
    setup = prepare_distillation(DataConfig(task="wnli", data_dir=str(glue_dir)), DistillConfig(student_layers=1),
                                 ["logits"], make_runtime("cpu", "fp32"), progress=False)
    assert len(setup.data["train"]) == 571 and len(setup.data["reward"]) == 64  # the student's split is whole
    assert setup.teacher_record()["max_train_examples"] == 100


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "rtx"], "unknown GLUE task 'rtx'"),
        (["--task", "rte", "--data-dir", "/nonexistent/glue"], "does not exist; pass --data-dir"),
        (["--task", "rte", "--model", "./no/such/model"], "does not exist"),
    ],
)
def test_finetune_teacher_bad_input_gives_one_clear_error(args, message, capsys, glue_dir):
    script = command("finetune_teacher")
    if "--data-dir" not in args:
        args = args + ["--data-dir", str(glue_dir)]
    assert script.main(args + ["--no-progress"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # a subprocess
def test_distill_help_lists_presets_and_flags():
    result = subprocess.run([sys.executable, str(REPO / "agents" / "distill.py"), "--help"],
                            capture_output=True, text=True, check=True)
    for text in ("--knowledge", "gkd-cls", "--teacher-mode", "--epochs", "--no-normalize", "--student-layers"):
        assert text in result.stdout


@pytest.mark.parametrize("knowledge", ["gkd", "logits=0.5,hidden=1,attention=1,relation=0.5,gradient_cls=1"])
def test_distill_runs_end_to_end_and_writes_results(knowledge, tiny_teacher, glue_dir, private_runs_dir, tmp_path):
    out = tmp_path / "run"
    code = command("distill").main(
        ["--task", "wnli", "--data-dir", str(glue_dir), "--knowledge", knowledge, "--epochs", "1",
         "--max-train-examples", "64", "--output-dir", str(out), "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "ok" and results["updates"] == 4
    assert set(results["dev"]) >= {"accuracy", "loss", "agreement"}
    assert results["student_teacher_ratio"] == pytest.approx(results["dev"]["accuracy"] / results["teacher_dev"]["accuracy"])
    assert "seeds:" in (out / "config.yaml").read_text()
    assert list(out.glob("events.out.tfevents.*"))
    caches = list((private_runs_dir / "cache" / "teacher_knowledge" / "wnli").iterdir())
    assert any(c.name.startswith("train-") for c in caches)


def test_distill_rejects_unknown_knowledge(tiny_teacher, glue_dir, capsys):
    assert command("distill").main(["--task", "wnli", "--data-dir", str(glue_dir), "--knowledge", "soft", "--no-progress"]) == 2
    assert "unknown knowledge 'soft'" in capsys.readouterr().err


def test_the_old_table_command_of_train_py_points_to_train_table(capsys):
    from tests.conftest import command

    assert command("train").main(["--algo", "ppo", "--table", "stsb"]) == 2
    assert "python agents/train_table.py --algo ALGO --table NAME" in capsys.readouterr().err


def test_a_live_agent_budget_may_be_given_in_episodes_as_table_agents_count_it(capsys):
    """train.py counts its budget in phases (--total-timesteps); --episodes N is N x phases, the unit
    train_table.py uses; giving both is refused by the parser."""
    train = command("train")
    args = train.parse_args(["--algo", "a2c", "--task", "wnli", "--phases", "3", "--episodes", "5"])
    *_, total = train.make_configs(args, "multibinary")
    assert total == 15
    args = train.parse_args(["--algo", "a2c", "--task", "wnli", "--phases", "3", "--total-timesteps", "7"])
    assert train.make_configs(args, "multibinary")[-1] == 7
    with pytest.raises(SystemExit):
        train.parse_args(["--algo", "a2c", "--task", "wnli", "--episodes", "2", "--total-timesteps", "6"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_each_preset_sets_its_measured_reward_and_a_flag_overrides_it():
    """The budgets' rewards (kdenv.config.BUDGETS, chosen by the reward curve in docs/benchmark.md) reach the
    environment through --preset; --reward given on the command line wins."""
    from kdenv.commands.train import make_configs, parse_args

    def env_of(*flags):
        return make_configs(parse_args(["--algo", "a2c", "--task", "rte", *flags]), "discrete")[2]

    assert env_of().reward == "metric_gain"
    assert env_of("--preset", "gpu").reward == "teacher_agreement"
    assert env_of("--preset", "gpu", "--reward", "loss_decrease").reward == "loss_decrease"
    assert env_of("--preset", "cpu", "--reward", "teacher_agreement").reward == "teacher_agreement"
