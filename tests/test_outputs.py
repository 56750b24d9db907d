"""Tables that keep per-example outputs, and headroom chosen on one set of examples and scored on
another (kdenv.benchmark.outputs, kdenv.benchmark.outofsample)."""

import dataclasses
import json
import zlib

import numpy as np
import pytest
import torch

from kdenv.benchmark.outofsample import TableLabels, metric_rows, out_of_sample, table_labels
from kdenv.benchmark.outputs import OutputsError, decode, encode, outputs_file
from kdenv.benchmark.table import Table, TableError
from kdenv.engine.knowledge.ce import task_loss
from kdenv.engine.metrics import task_metrics
from kdenv.engine.tasks import get_task
from tests.tables import table_with_outputs


@pytest.mark.parametrize("task", ["stsb", "mrpc", "cola", "rte"])
def test_metrics_of_many_students_at_once_are_the_metrics_of_each(task):
    spec = get_task(task)
    rng = np.random.default_rng(0)
    labels = rng.uniform(0, 5, 60).astype(np.float32) if spec.is_regression else rng.integers(0, 2, 60)
    outputs = rng.normal(size=(3, 4, 60, spec.num_labels)).astype(np.float32)
    outputs[0, 0] = 0.0  # a constant student: correlations are 0, as kdenv.engine.metrics defines them
    for name in spec.metrics:
        rows = metric_rows(spec, name, outputs, labels)
        assert rows.shape == (3, 4)
        for i in range(3):
            for j in range(4):
                assert rows[i, j] == pytest.approx(task_metrics(spec, outputs[i, j], labels)[name], abs=1e-9)
    losses = metric_rows(spec, "loss", outputs[1], labels)
    for j in range(4):
        expected = task_loss(spec, torch.from_numpy(outputs[1, j]), torch.from_numpy(np.asarray(labels)))
        assert losses[j] == pytest.approx(float(expected), rel=1e-5)


def test_outputs_round_trip_as_float16_and_a_short_buffer_is_refused():
    values = np.array([[0.1, -2.5], [3.25, 1e-3]], dtype=np.float32)
    item = json.loads(json.dumps(encode(values)))
    assert np.array_equal(decode(item), values.astype(np.float16))
    with pytest.raises(OutputsError, match="hold 3 values"):
        decode({"shape": [2, 2], "f16": encode(values[0, :1].repeat(3))["f16"]})


def noise_table(directory, signal: float, seeds=(0, 1, 2, 3), examples=64, dev_examples=200,
                planted=lambda seed: (0, 1)):
    """STS-B-like outputs: the label plus noise; schedule ``planted(seed)`` (default (0, 1) on every
    seed) is better than the rest by ``signal`` (less noise), on both the reward split and dev."""
    rng = np.random.default_rng(1)
    reward_labels = rng.uniform(0, 5, examples).astype(np.float32)
    dev_labels = rng.uniform(0, 5, dev_examples).astype(np.float32)

    def outputs(seed, schedule, split):
        labels = reward_labels if split == "reward" else dev_labels
        local = np.random.default_rng(zlib.crc32(repr((seed, schedule, split)).encode()))
        noise = 2.0 - (signal if tuple(schedule) == planted(seed) else 0.0)
        return (labels + noise * local.normal(size=len(labels)))[:, None]

    def teacher(split):
        labels = reward_labels if split == "reward" else dev_labels
        return (labels + 0.5 * np.random.default_rng(7).normal(size=len(labels)))[:, None]

    table = table_with_outputs(directory, "stsb", ["logits", "hidden"], 2, reward_labels, dev_labels, outputs, seeds,
                               teacher)
    return table, TableLabels(reward_labels, dev_labels)


def test_where_schedules_differ_only_by_noise_the_in_sample_headroom_is_a_winners_curse(tmp_path):
    table, labels = noise_table(tmp_path, signal=0.0)
    result = out_of_sample(table, labels, halvings=10, resamples=60)
    assert result["in_sample_half"]["oracle"]["mean"] > 0.05  # the best of 16 noisy values, on the same examples
    low, high = result["crossfit"]["oracle"]["ci"]
    assert low < 0 < high or abs(result["crossfit"]["oracle"]["mean"]) < 0.02
    assert result["in_sample_half"]["oracle"]["ci"][0] > 0  # "significant" in sample, and only there
    assert result["winners_curse"]["oracle"]["mean"] > 0.05
    assert result["dev_halves"]["oracle"]["ci"][0] < 0.01
    assert result["crossfit"]["oracle"]["n"] == 4 and set(result["crossfit"]["oracle"]["per_seed"]) == {0, 1, 2, 3}


def test_a_schedule_that_is_really_better_shows_out_of_sample_on_the_reward_split_and_on_dev(tmp_path):
    table, labels = noise_table(tmp_path, signal=1.5)
    result = out_of_sample(table, labels, halvings=10, resamples=60)
    for figure in ("crossfit", "reward_to_dev", "dev_halves"):
        for choice in ("oracle", "open_loop"):
            assert result[figure][choice]["ci"][0] > 0, (figure, choice, result[figure][choice])
    # The open-loop choice finds the one better schedule on every seed: its out-of-sample gain is close
    # to the oracle's, which adds only noise picked on the other half.
    assert result["reward_to_dev"]["open_loop"]["mean"] >= result["reward_to_dev"]["oracle"]["mean"] - 0.05


def test_what_adapting_to_the_seed_adds_over_one_fixed_schedule_is_measured_paired(tmp_path):
    """over_open_loop: the oracle's gain over the best open-loop schedule. Where each seed has a better
    schedule of its own, only a per-seed choice finds it (above 0 on every figure); where one schedule is
    better on every seed, the fixed schedule finds it too, and adapting adds nothing beyond noise."""
    own = {0: (0, 1), 1: (1, 2), 2: (2, 3), 3: (3, 0)}
    table, labels = noise_table(tmp_path / "own", signal=1.5, planted=own.__getitem__)
    result = out_of_sample(table, labels, halvings=10, resamples=60)
    for figure in ("crossfit", "reward_to_dev", "dev_halves"):
        over = result["over_open_loop"][figure]["oracle"]
        assert over["ci"][0] > 0, (figure, over)
        # paired: the difference of the two figures, seed by seed
        for seed in table.seeds:
            expected = result[figure]["oracle"]["per_seed"][seed] - result[figure]["open_loop"]["per_seed"][seed]
            assert over["per_seed"][seed] == pytest.approx(expected)
    shared, labels = noise_table(tmp_path / "shared", signal=1.5)
    result = out_of_sample(shared, labels, halvings=10, resamples=60)
    for figure in ("reward_to_dev", "dev_halves"):
        over = result["over_open_loop"][figure]["oracle"]
        assert abs(over["mean"]) < 0.02 and over["ci"][0] < 0.01, (figure, over)


def test_the_reward_curve_ranks_schedules_as_dev_does_better_with_more_examples(tmp_path):
    from kdenv.benchmark.outofsample import reward_curve

    table, labels = noise_table(tmp_path, signal=1.0, examples=128)
    curve = reward_curve(table, labels, sizes=[8, 64], rewards=("metric_gain", "loss_decrease", "teacher_agreement"),
                         draws=12)
    rows = {(row["reward"], row["examples"]): row for row in curve["rows"]}
    assert set(rows) == {(r, n) for r in ("metric_gain", "loss_decrease", "teacher_agreement") for n in (8, 64)}
    # 64 examples measure the one better schedule more surely than 8: closer to dev, more reliable.
    assert rows["metric_gain", 64]["agreement"] > rows["metric_gain", 8]["agreement"]
    assert rows["metric_gain", 64]["reliability"] > rows["metric_gain", 8]["reliability"]
    assert rows["metric_gain", 64]["to_dev"] > 0 and 0 < curve["dev_reliability"] <= 1
    assert curve["reward_examples"] == 128 and curve["seeds"] == 4


def test_an_edited_outputs_file_is_refused_and_a_table_without_outputs_says_how_to_get_them(tmp_path):
    table, _ = noise_table(tmp_path / "t", signal=0.0, seeds=(0,))
    path = table.directory / outputs_file(0)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(OutputsError, match="truncated or altered"):
        Table.load(table.directory).outputs(0)
    path.unlink()
    with pytest.raises(OutputsError, match="not in the wheel"):
        Table.load(table.directory).outputs(0)
    manifest = json.loads((table.directory / "manifest.json").read_text())
    assert manifest["format"] == 2
    from kdenv.benchmark.table import resolve_table

    old = resolve_table("stsb_u8")
    assert not old.has_outputs and old.manifest["format"] == 1
    with pytest.raises(OutputsError, match="keeps no per-example outputs"):
        old.outputs(0)
    with pytest.raises(OutputsError, match="keeps no per-example outputs"):
        table_labels(old.manifest)


def test_a_manifest_whose_outputs_files_do_not_match_its_seeds_is_refused(tmp_path):
    from kdenv.benchmark.table import write_manifest

    table, _ = noise_table(tmp_path, signal=0.0, seeds=(0, 1))
    manifest = dict(table.manifest)
    manifest["outputs_files"] = {outputs_file(0): manifest["outputs_files"][outputs_file(0)]}
    manifest.pop("files")
    write_manifest(tmp_path, manifest)
    with pytest.raises(TableError, match="outputs files .* are not one checksummed file per seed"):
        Table.load(tmp_path)


@pytest.fixture(scope="module")
def built_with_outputs(tmp_path_factory, glue_dir, tiny_teacher_source):
    """A tiny WNLI table (2 phases over 2 types, 2 seeds) built with per-example outputs, dev scored
    on a fixed subsample of 40 examples."""
    import shutil

    from kdenv.benchmark.build import TreeSetup, run_jobs, write_table
    from kdenv.benchmark.tree import DevScoring
    from kdenv.config import DataConfig, DistillConfig, EnvConfig

    root = tmp_path_factory.mktemp("outputs")
    shutil.copytree(tiny_teacher_source[1] / "teachers", root / "runs" / "teachers")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDENV_RUNS_DIR", str(root / "runs"))
        setup = TreeSetup(DataConfig(task="wnli", data_dir=str(glue_dir), max_train_examples=32, max_reward_examples=16),
                          DistillConfig(), EnvConfig(knowledge=["logits", "gradient"], phases=2, updates_per_phase=1),
                          dev=DevScoring(examples=40), outputs=True)
        environment = setup.build_env(progress=False)
        run_jobs(setup, [0, 1], job_depth=1, progress=False, environment=environment)
        write_table(setup, environment, [0, 1], root / "table")
        yield {"setup": setup, "environment": environment, "table": Table.load(root / "table"), "runs": root / "runs"}


def test_a_built_table_keeps_outputs_that_give_back_every_recorded_metric(built_with_outputs, glue_dir):
    table = built_with_outputs["table"]
    spec = get_task("wnli")
    assert table.has_outputs and table.manifest["format"] == 2
    assert table.manifest["outputs"]["examples"] == {"reward": 16, "dev": 40}
    setup = built_with_outputs["setup"]  # a build without outputs has its own work folder
    assert setup.key() != dataclasses.replace(setup, outputs=False).key()
    labels = table_labels(table.manifest, str(glue_dir))
    assert len(labels.reward) == 16 and len(labels.dev) == 40
    for seed in table.seeds:
        outputs = table.outputs(seed)
        assert set(outputs.reward) == set(table.nodes[seed]) and set(outputs.dev) == {
            tuple(leaf["history"]) for leaf in table.leaves(seed)}
        assert outputs.teacher["reward"].shape == (16, 2) and outputs.teacher["dev"].shape == (40, 2)
        for history, node in table.nodes[seed].items():
            # float16 keeps the argmax wherever the two logits are not within its rounding of each other
            recomputed = metric_rows(spec, "accuracy", outputs.reward[history], labels.reward)
            assert recomputed == pytest.approx(node["metric"], abs=1 / 16 + 1e-9)
            loss = metric_rows(spec, "loss", outputs.reward[history], labels.reward)
            assert loss == pytest.approx(node.get("reward_split", {"loss": node["loss"]})["loss"], rel=1e-2)
        for leaf in table.leaves(seed):
            dev = metric_rows(spec, "accuracy", outputs.dev[tuple(leaf["history"])], labels.dev)
            assert dev == pytest.approx(leaf["dev"]["accuracy"], abs=1 / 40 + 1e-9)
    result = out_of_sample(table, labels, halvings=4, resamples=20)
    assert result["reward_examples"] == 16 and result["dev_examples"] == 40
    assert np.isfinite(result["crossfit"]["oracle"]["mean"]) and len(result["reward_to_dev"]["oracle"]["ci"]) == 2


def test_labels_of_other_data_are_refused(built_with_outputs, glue_dir):
    manifest = json.loads(json.dumps(built_with_outputs["table"].manifest))
    manifest["outputs"]["labels"]["dev"] = "0" * 16
    with pytest.raises(OutputsError, match="dev labels read from the GLUE files .* are not those the table was built"):
        table_labels(manifest, str(glue_dir))


def test_a_table_with_outputs_still_replays_live_exactly(built_with_outputs):
    from kdenv.benchmark.validate import validate

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDENV_RUNS_DIR", str(built_with_outputs["runs"]))
        for seed, schedule in [(0, [3, 1]), (1, [2, 0])]:
            result = validate(built_with_outputs["table"], schedule, seed, built_with_outputs["environment"])
            assert result.ok, result.mismatches


def test_teacher_agreement_is_scored_out_of_sample_from_the_teachers_outputs(tmp_path):
    """teacher_agreement reads the teacher's stored outputs instead of labels: where one schedule's
    student is really closer to the truth (and so to a good teacher), it is found out of sample; where
    schedules differ by noise only, it is not."""
    table, labels = noise_table(tmp_path / "signal", signal=1.5)
    result = out_of_sample(table, labels, reward="teacher_agreement", halvings=10, resamples=60)
    assert result["reward_to_dev"]["open_loop"]["ci"][0] > 0 and result["crossfit"]["open_loop"]["ci"][0] > 0
    table, labels = noise_table(tmp_path / "noise", signal=0.0)
    result = out_of_sample(table, labels, reward="teacher_agreement", halvings=10, resamples=60)
    assert result["reward_to_dev"]["open_loop"]["ci"][0] < 0.01
