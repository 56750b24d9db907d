"""Data tests on the real GLUE files, plus hand-made folders for the failure cases."""

import numpy as np
import pytest

from kdenv.config import DataConfig
from kdenv.engine import data as kdata
from kdenv.engine.data import (
    DataError,
    collate,
    length_bucketed_batches,
    load_raw_splits,
    load_task_data,
    padding_savings,
    stratified_holdout,
)
from kdenv.engine.tasks import get_task

REAL_COUNTS = {
    "rte": (2490, 277), "mrpc": (3668, 408), "cola": (8551, 1043),
    "stsb": (5749, 1500), "sst2": (67349, 872), "wnli": (635, 71),
}


@pytest.mark.parametrize("task", sorted(REAL_COUNTS))
def test_real_split_sizes(glue_dir, task):
    splits = load_raw_splits(get_task(task), glue_dir)
    assert (len(splits["train"]), len(splits["dev"])) == REAL_COUNTS[task]


def test_real_labels_and_texts_are_parsed(glue_dir):
    rte = load_raw_splits(get_task("rte"), glue_dir)["train"]
    assert rte.text_a[0] == "No Weapons of Mass Destruction Found in Iraq Yet."
    assert rte.text_b[0] == "Weapons of Mass Destruction Found in Iraq."
    assert rte.labels[0] == 1  # not_entailment
    assert np.bincount(rte.labels).tolist() == [1249, 1241]

    mrpc = load_raw_splits(get_task("mrpc"), glue_dir)["train"]  # header starts with a BOM
    assert mrpc.text_a[0].startswith("Amrozi accused his brother")
    assert np.bincount(mrpc.labels).tolist() == [1194, 2474]

    cola = load_raw_splits(get_task("cola"), glue_dir)["train"]  # no header line
    assert cola.text_a[0] == "Our friends won't buy this analysis, let alone the next one we propose."
    assert cola.text_b is None
    assert np.bincount(cola.labels).tolist() == [2528, 6023]

    sst2 = load_raw_splits(get_task("sst2"), glue_dir)["train"]
    assert np.bincount(sst2.labels).tolist() == [29780, 37569]

    stsb = load_raw_splits(get_task("stsb"), glue_dir)["train"]
    assert stsb.labels.dtype == np.float32 and stsb.labels[0] == pytest.approx(5.0)
    assert 0.0 <= stsb.labels.min() and stsb.labels.max() <= 5.0


def test_fields_with_unbalanced_quotes_stay_inside_their_row(glue_dir):
    mrpc = load_raw_splits(get_task("mrpc"), glue_dir)["train"]
    quoted = [text for text in mrpc.text_a if text.count('"') % 2 == 1]
    assert quoted, "the MRPC train file is known to hold unbalanced quotes"
    assert all("\t" not in text and "\n" not in text for text in quoted)


def _write_task(root, folder, train_lines, dev_lines):
    (root / folder).mkdir(parents=True)
    (root / folder / "train.tsv").write_text("\n".join(train_lines) + "\n")
    (root / folder / "dev.tsv").write_text("\n".join(dev_lines) + "\n")


def test_malformed_line_names_file_and_line(tmp_path):
    header = "index\tsentence1\tsentence2\tlabel"
    _write_task(tmp_path, "RTE", [header, "0\ta\tb\tentailment", "1\tbroken line\tentailment"], [header, "0\ta\tb\tentailment"])
    with pytest.raises(DataError, match=r"train.tsv:3: malformed line with 3 tab-separated fields, expected 4"):
        load_raw_splits(get_task("rte"), tmp_path)


def test_unknown_label_is_reported(tmp_path):
    header = "index\tsentence1\tsentence2\tlabel"
    _write_task(tmp_path, "RTE", [header, "0\ta\tb\tmaybe"], [header, "0\ta\tb\tentailment"])
    with pytest.raises(DataError, match="label 'maybe' is not valid for rte"):
        load_raw_splits(get_task("rte"), tmp_path)


def test_missing_task_files_and_folders_say_how_to_fix(tmp_path, glue_dir):
    with pytest.raises(DataError, match=r"missing file .*QNLI/train.tsv.*hub"):
        load_raw_splits(get_task("qnli"), glue_dir)  # the shared folder has QNLI dev only
    with pytest.raises(DataError, match="does not exist; pass --data-dir"):
        load_raw_splits(get_task("rte"), tmp_path / "nowhere")


def test_mnli_loads_matched_and_mismatched_dev(tmp_path):
    columns = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2", "label1", "gold_label"]
    row = lambda a, b, label: "\t".join(["0", "1", "2", "g", "x", "x", "x", "x", a, b, label, label])  # noqa: E731
    (tmp_path / "MNLI").mkdir()
    (tmp_path / "MNLI" / "train.tsv").write_text("\n".join(["\t".join(columns), row("p", "h", "neutral")]) + "\n")
    (tmp_path / "MNLI" / "dev_matched.tsv").write_text("\n".join(["\t".join(columns), row("p", "h", "contradiction")]))
    (tmp_path / "MNLI" / "dev_mismatched.tsv").write_text("\n".join(["\t".join(columns), row("p", "h", "entailment")]))
    splits = load_raw_splits(get_task("mnli"), tmp_path)
    assert [splits[s].labels.tolist() for s in ("train", "dev", "dev_mismatched")] == [[1], [2], [0]]


def test_hub_source_goes_through_the_same_path(monkeypatch, tokenizer):
    import datasets

    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        rows = {"sentence1": ["a cat sat", "dogs bark"] * 10, "sentence2": ["a cat", "cats bark"] * 10,
                "label": [0, 1] * 10, "idx": list(range(20))}
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv("KDENV_GLUE_DIR", raising=False)
    task_data = load_task_data(DataConfig(task="rte", data_dir=None, reward_size=4), tokenizer)
    assert calls == [("nyu-mll/glue", "rte", "train"), ("nyu-mll/glue", "rte", "validation")]
    assert len(task_data["train"]) == 16 and len(task_data["reward"]) == 4 and len(task_data["dev"]) == 20
    assert sorted(np.bincount(task_data["reward"].labels).tolist()) == [2, 2]


def test_hub_failure_points_to_the_local_folder(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.delenv("KDENV_GLUE_DIR", raising=False)
    with pytest.raises(DataError, match="KDENV_GLUE_DIR"):
        load_raw_splits(get_task("rte"), None)


def test_environment_variable_selects_the_local_folder(monkeypatch, glue_dir):
    monkeypatch.setenv("KDENV_GLUE_DIR", str(glue_dir))
    assert len(load_raw_splits(get_task("wnli"), None)["train"]) == 635


# ------------------------------------------------------------------ splits


def test_stratified_holdout_is_disjoint_stratified_and_deterministic():
    labels = np.array([0] * 700 + [1] * 300)
    kept, held = stratified_holdout(labels, 0.1, seed=3)
    assert len(held) == 100 and len(kept) == 900
    assert np.intersect1d(kept, held).size == 0 and np.union1d(kept, held).size == 1000
    assert np.bincount(labels[held]).tolist() == [70, 30]
    again_kept, again_held = stratified_holdout(labels, 0.1, seed=3)
    assert np.array_equal(held, again_held)
    assert not np.array_equal(held, stratified_holdout(labels, 0.1, seed=4)[1])


def test_regression_holdout_spreads_over_the_score_range():
    scores = np.linspace(0, 5, 1000).astype(np.float32)
    _, held = stratified_holdout(scores, 100, seed=0, regression=True)
    counts, _ = np.histogram(scores[held], bins=5, range=(0, 5))
    assert counts.tolist() == [20, 20, 20, 20, 20]


def test_reward_split_of_real_rte_is_held_out_of_train(glue_dir, tokenizer):
    config = DataConfig(task="rte", data_dir=str(glue_dir))
    task_data = load_task_data(config, tokenizer)
    assert len(task_data["reward"]) == 249 and len(task_data["train"]) == 2490 - 249
    assert np.intersect1d(task_data.train_indices, task_data.reward_indices).size == 0
    raw_train = load_raw_splits(get_task("rte"), glue_dir)["train"]
    assert np.bincount(raw_train.labels[task_data.reward_indices]).tolist() in ([125, 124], [124, 125])
    # The token ids of the reward split are those of the held-out train rows, not of dev.
    row = int(task_data.reward_indices[0])
    expected = tokenizer(raw_train.text_a[row], raw_train.text_b[row], truncation=True, max_length=128)["input_ids"]
    assert task_data["reward"].input_ids[0].tolist() == expected
    same = load_task_data(config, tokenizer)
    assert np.array_equal(same.reward_indices, task_data.reward_indices)
    capped = load_task_data(DataConfig(task="rte", data_dir=str(glue_dir), max_reward_examples=50), tokenizer)
    assert len(capped["reward"]) == 50 and set(capped.reward_indices) <= set(task_data.reward_indices)


# ------------------------------------------------------------------ tokenisation cache


def test_tokenization_is_cached_on_disk_and_keyed(glue_dir, tokenizer, monkeypatch, private_runs_dir):
    config = DataConfig(task="wnli", data_dir=str(glue_dir))
    first = load_task_data(config, tokenizer)
    files = sorted((private_runs_dir / "cache" / "tokenized").glob("wnli-*.npz"))
    assert len(files) == 2  # train and dev

    def must_not_encode(*args, **kwargs):
        raise AssertionError("tokenised again despite a valid cache")

    monkeypatch.setattr(kdata, "_encode", must_not_encode)
    second = load_task_data(config, tokenizer)
    assert all(np.array_equal(a, b) for a, b in zip(first["train"].input_ids, second["train"].input_ids))
    with pytest.raises(AssertionError, match="tokenised again"):  # another max length is another key
        load_task_data(DataConfig(task="wnli", data_dir=str(glue_dir), max_length=64), tokenizer)


def test_corrupt_tokenization_cache_is_rebuilt(glue_dir, tokenizer, private_runs_dir):
    config = DataConfig(task="wnli", data_dir=str(glue_dir))
    reference = load_task_data(config, tokenizer)
    for path in (private_runs_dir / "cache" / "tokenized").glob("wnli-*.npz"):
        path.write_bytes(b"not a numpy archive")
    rebuilt = load_task_data(config, tokenizer)
    assert all(np.array_equal(a, b) for a, b in zip(reference["dev"].input_ids, rebuilt["dev"].input_ids))


# ------------------------------------------------------------------ batching


def test_bucketed_batches_cover_every_example_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 128, size=1000)
    batches = length_bucketed_batches(lengths, 16, shuffle=True, seed=1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean([lengths[b].max() - lengths[b].min() for b in np.array_split(rng.permutation(1000), 63)])
    assert spread < random_spread / 5
    assert [b.tolist() for b in batches] == [b.tolist() for b in length_bucketed_batches(lengths, 16, True, 1)]
    assert [b.tolist() for b in batches] != [b.tolist() for b in length_bucketed_batches(lengths, 16, True, 2)]


def test_collate_pads_dynamically():
    split = kdata.EncodedSplit(
        [np.array([101, 5, 102]), np.array([101, 7, 8, 9, 102])],
        [np.zeros(3, np.int8), np.array([0, 0, 0, 1, 1], np.int8)],
        np.array([0, 1]),
    )
    batch = collate(split, np.array([1, 0]), pad_token_id=0)
    assert batch["input_ids"].tolist() == [[101, 7, 8, 9, 102], [101, 5, 102, 0, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [5, 3]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 1, 1]
    assert batch["labels"].tolist() == [1, 0] and batch["example_ids"].tolist() == [1, 0]


def test_dynamic_padding_saving_on_real_rte(glue_dir, tokenizer):
    task_data = load_task_data(DataConfig(task="rte", data_dir=str(glue_dir)), tokenizer)
    lengths = task_data["train"].lengths
    savings = padding_savings(lengths, length_bucketed_batches(lengths, 16, True, 0), 128)
    assert savings["dynamic_tokens"] >= savings["real_tokens"]
    assert savings["saving"] > 0.4  # RTE pairs average ~66 tokens of 128
    assert savings["dynamic_tokens"] < 1.05 * savings["real_tokens"]
