"""Tasks from files (kdenv.engine.task_files): small CSV / TSV / JSON Lines / Parquet tasks the
tests write, read through `datasets`; every bad input is one clear line before any model loads; a
task file works where a GLUE name does (the teacher fine-tune and an evaluation, end to end)."""

import json
import re
import warnings

import pytest

from kdenv.engine.data import load_raw_splits
from kdenv.engine.task_files import TaskFileError
from kdenv.engine.tasks import get_task
from tests.conftest import command

ROWS = [("a warm and funny film", "positive"), ("a dull mess", "negative"), ("moving and sharp", "positive"),
        ("tedious and flat", "negative"), ("a quiet triumph", "positive"), ("lifeless", "negative")]


def write_csv(path, header, rows, delimiter=","):
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def task_file(folder, name="toy", train="train.csv", dev="dev.csv", **fields):
    spec = {"name": name, "train": train, "dev": dev, "text": "sentence", "label": "label", "type": "classification",
            **fields}
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(f"{key}: {json.dumps(value)}" for key, value in spec.items()) + "\n")
    return path


def classification(folder, train=ROWS, dev=ROWS[:2][::-1] and [("very warm", "positive"), ("very dull", "negative")],
                   **fields):
    write_csv(folder / "train.csv", ["sentence", "label"], train)
    write_csv(folder / "dev.csv", ["sentence", "label"], dev)
    return task_file(folder, **fields)


def test_a_classification_task_file_is_read_with_its_labels_recorded(tmp_path):
    spec = get_task(str(classification(tmp_path, metrics=["accuracy", "f1"])))
    assert spec.name == "toy" and spec.label_names == ("negative", "positive") and not spec.is_pair  # inferred, sorted
    assert spec.primary_metric == "accuracy" and spec.ref == str((tmp_path / "toy.yaml").resolve())
    splits = load_raw_splits(spec, None)
    assert splits["train"].text_a[0] == "a warm and funny film" and splits["train"].labels.tolist() == [1, 0, 1, 0, 1, 0]
    assert get_task("toy") is spec  # by name, once read (teacher folders and caches use the name)


@pytest.mark.parametrize("suffix", ["tsv", "jsonl", "parquet"])
def test_a_pair_or_regression_task_reads_every_format(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame({"s1": ["a", "b", "c", "d"], "s2": ["w", "x", "y", "z"], "score": [0.5, 1.0, 4.5, 3.0]})
    for split in ("train", "dev"):
        path = tmp_path / f"{split}.{suffix}"
        if suffix == "tsv":
            frame.to_csv(path, sep="\t", index=False)
        elif suffix == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_parquet(path)
    spec = get_task(str(task_file(tmp_path, name=f"pairs_{suffix}", train=f"train.{suffix}", dev=f"dev.{suffix}",
                                  text=["s1", "s2"], label="score", type="regression", metrics=["pearson", "spearman"])))
    assert spec.is_pair and spec.is_regression and spec.num_labels == 1 and spec.primary_metric == "pearson"
    dev = load_raw_splits(spec, None)["dev"]
    assert dev.text_b == ["w", "x", "y", "z"] and dev.labels.tolist() == [0.5, 1.0, 4.5, 3.0]


def refused(path, match):
    with pytest.raises(TaskFileError, match=match):
        get_task(str(path))


def test_every_bad_input_is_one_line_naming_the_problem(tmp_path):
    folders = iter(tmp_path / f"case{n}" for n in range(20))

    def fresh():
        folder = next(folders)
        folder.mkdir()
        return folder

    refused(tmp_path / "none.yaml", "does not exist")
    folder = fresh()
    refused(task_file(folder), r"train file .*train.csv does not exist")
    refused(classification(fresh(), label="stars"), r"no column 'stars' \(it has \['sentence', 'label'\]\)")
    folder = fresh()
    write_csv(folder / "train.csv", ["sentence", "label"], ROWS)
    write_csv(folder / "dev.csv", ["sentence", "label"], [])
    refused(task_file(folder), "dev file dev.csv holds no rows")
    refused(classification(fresh(), labels=["negative", "positive"], dev=[("odd", "neutral")]),
            r"dev.csv row 1: label 'neutral' is not one of \['negative', 'positive'\]")
    refused(classification(fresh(), labels=["negative", "positive", "mixed"], metrics=["accuracy"]),
            r"label\(s\) \['mixed'\] never occur in the train file")
    folder = fresh()
    write_csv(folder / "train.csv", ["sentence", "score"], [("a", "1.5"), ("b", "inf")])
    write_csv(folder / "dev.csv", ["sentence", "score"], [("c", "2")])
    refused(task_file(folder, label="score", type="regression"), r"train.csv row 2: label inf is not a finite number")
    folder = fresh()
    write_csv(folder / "train.csv", ["sentence", "label"], [(1, "positive"), (2, "negative")])
    write_csv(folder / "dev.csv", ["sentence", "label"], [(3, "positive")])
    refused(task_file(folder), r"row 1: column 'sentence' holds 1, not text")
    folder = fresh()
    write_csv(folder / "train.csv", ["sentence", "label"], ROWS)
    write_csv(folder / "dev.csv", ["sentence", "label"], [("no label here", "")])
    refused(task_file(folder), r"dev.csv row 1: no label in column 'label'")
    refused(classification(fresh(), name="rte"), "not a GLUE task's name")
    refused(classification(fresh(), colour="blue"), r"unknown keys \['colour'\]")
    refused(classification(fresh(), metrics=["pearson"]), r"metrics \['pearson'\] do not apply to classification")
    refused(classification(fresh(), type="ranking"), "type must be classification or regression")


def test_dev_rows_that_are_also_in_train_are_warned_about(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_task(str(classification(tmp_path, name="leaky", dev=[ROWS[0], ("new", "negative")])))
    assert any("1 dev row(s) also appear in train" in str(w.message) for w in caught)


def test_a_task_file_works_where_a_glue_name_does(tiny_teacher, tmp_path, private_runs_dir):
    """The shipped example (examples/sentiment.yaml) through the teacher fine-tune and an evaluation."""
    from tests.conftest import REPO

    task = str(REPO / "examples" / "sentiment.yaml")
    assert command("finetune_teacher").main(["--task", task, "--model", str(tiny_teacher), "--epochs", "1",
                                             "--max-steps", "2", "--no-progress"]) == 0
    teacher = json.loads((private_runs_dir / "teachers" / "sentiment" / "kdenv.json").read_text())
    assert teacher["primary_metric"] == "accuracy"
    out = tmp_path / "eval"
    assert command("evaluate").main(["--task", task, "--policies", "kd,all", "--num-seeds", "1", "--phases", "2",
                                     "--updates-per-phase", "1", "--max-train-examples", "32", "--max-reward-examples",
                                     "16", "--no-progress", "--output-dir", str(out)]) == 0
    runs = json.loads((out / "runs.json").read_text())
    assert {run["policy"] for run in runs} == {"kd", "all"} and all(0 <= run["dev"]["accuracy"] <= 1 for run in runs)


def test_the_glue_tasks_are_specs_read_by_the_task_file_code(tmp_path):
    """kdenv/engine/glue.yaml goes through describe_task, the check every task file goes through: a GLUE
    spec with a task file's mistakes is refused with the same one-line messages."""
    from kdenv.engine.task_files import TaskFileError
    from kdenv.engine.tasks import GLUE_SPECS, TASKS, load_glue_specs

    assert load_glue_specs() == TASKS and len(TASKS) == 9
    assert TASKS["stsb"].is_regression and TASKS["mnli"].local.dev_files == ("dev_matched.tsv", "dev_mismatched.tsv")
    assert TASKS["cola"].local.text_a == 3 and not TASKS["cola"].local.has_header  # columns by position
    text = GLUE_SPECS.read_text()
    for broken, message in [(text.replace("metrics: [pearson, spearman]", "metrics: [accuracy]"),
                             "metrics ['accuracy'] do not apply to regression"),
                            (text.replace("type: regression", "type: ranking"), "type must be classification or "
                                                                                "regression"),
                            (text.replace("  glue: {folder: RTE}", "  glue: {folder: RTE, sep: tab}"), "glue takes")]:
        path = tmp_path / "glue.yaml"
        path.write_text(broken)
        with pytest.raises(TaskFileError, match=re.escape(message)):
            load_glue_specs(path)


def test_a_task_file_may_name_a_dataset_instead_of_files(tmp_path):
    """hub: <dataset> reads a datasets dataset (a hub id where the hub is reachable; here a local
    dataset folder, which load_dataset reads the same way): its ClassLabel names in the dataset's order,
    its splits by name; a wrong split or column, or both sources at once, is one line."""
    import datasets

    from kdenv.engine.data import load_raw_splits

    folder = tmp_path / "reviews"
    folder.mkdir()
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    train = [("a warm and funny film", 1), ("a dull mess", 0), ("moving", 1), ("flat", 0)]
    for split, rows in (("train", train), ("validation", [("very warm", 1), ("very dull", 0)])):
        datasets.Dataset.from_dict({"sentence": [r[0] for r in rows], "label": [r[1] for r in rows]},
                                   features=features).to_parquet(folder / f"{split}.parquet")
    path = tmp_path / "reviews.yaml"
    path.write_text(f"name: reviews_hub\nhub: {folder}\ntext: sentence\nlabel: label\ntype: classification\n")
    spec = get_task(str(path))
    assert spec.label_names == ("neg", "pos") and spec.files.hub[2:] == ("train", "validation")
    raw = load_raw_splits(spec, None)
    assert list(raw["train"].labels) == [1, 0, 1, 0] and raw["dev"].text_a == ["very warm", "very dull"]

    for text, message in [(f"name: r2\nhub: {folder}\ndev_split: test\ntext: sentence\nlabel: label\n"
                           "type: classification\n", "split 'test'"),
                          (f"name: r3\nhub: {folder}\ntext: review\nlabel: label\ntype: classification\n",
                           "has no column 'review'"),
                          (f"name: r4\nhub: {folder}\ntrain: a.csv\ntext: sentence\nlabel: label\n"
                           "type: classification\n", "not both"),
                          ("name: r5\ntrain: a.csv\ndev: b.csv\ndev_split: test\ntext: sentence\nlabel: label\n"
                           "type: classification\n", "go with hub")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(TaskFileError, match=re.escape(message)):
            get_task(str(bad))


def test_a_task_files_data_is_read_once_per_process_until_a_file_changes(tmp_path, monkeypatch):
    import os

    import kdenv.engine.task_files as task_files

    calls = []
    real = task_files._read_columns
    monkeypatch.setattr(task_files, "_read_columns", lambda *a, **k: calls.append(a[0].name) or real(*a, **k))
    spec = get_task(str(classification(tmp_path, name="once")))
    first = load_raw_splits(spec, None)
    assert sorted(calls) == ["dev.csv", "train.csv"]  # checked by get_task, then given back as read
    first["train"].text_a.append("changed by a caller")
    assert load_raw_splits(spec, None)["train"].text_a == [row[0] for row in ROWS] and len(calls) == 2
    train = tmp_path / "train.csv"
    train.write_text(train.read_text() + "another warm film,positive\n")
    os.utime(train, ns=(train.stat().st_atime_ns, train.stat().st_mtime_ns + 10**9))
    assert len(load_raw_splits(spec, None)["train"].text_a) == len(ROWS) + 1 and calls.count("train.csv") == 2
