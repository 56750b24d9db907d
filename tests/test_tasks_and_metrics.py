import numpy as np
import pytest
from scipy import stats

from kdenv.engine.metrics import f1_binary, matthews_corr, task_metrics
from kdenv.engine.tasks import TASKS, get_task


def test_all_nine_glue_tasks_with_their_official_metrics():
    expected = {
        "cola": ("matthews_corr",), "sst2": ("accuracy",), "mrpc": ("f1", "accuracy"),
        "stsb": ("pearson", "spearman"), "qqp": ("accuracy", "f1"), "mnli": ("accuracy",),
        "qnli": ("accuracy",), "rte": ("accuracy",), "wnli": ("accuracy",),
    }
    assert set(TASKS) == set(expected)
    for name, metrics in expected.items():
        assert TASKS[name].metrics[: len(metrics)] == metrics
    assert TASKS["stsb"].is_regression and TASKS["stsb"].num_labels == 1
    assert TASKS["mnli"].num_labels == 3 and TASKS["mnli"].local.dev_files == ("dev_matched.tsv", "dev_mismatched.tsv")


def test_task_lookup_accepts_glue_spellings_and_rejects_unknown_names():
    assert get_task("SST-2").name == "sst2"
    assert get_task("RTE").name == "rte"
    with pytest.raises(ValueError, match="unknown GLUE task 'rtx'.*rte"):
        get_task("rtx")


def test_label_ids_follow_the_hub_order():
    assert get_task("rte").label_id("not_entailment") == 1
    assert get_task("mnli").label_id("contradiction") == 2
    assert get_task("mrpc").label_id("1") == 1
    assert get_task("stsb").label_id("3.800") == pytest.approx(3.8)
    with pytest.raises(ValueError):
        get_task("rte").label_id("maybe")


def test_binary_metrics_on_hand_counted_confusions():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    predictions = np.array([1, 1, 0, 0, 0, 1, 1, 0])  # tp=3 fn=1 fp=1 tn=3
    assert f1_binary(predictions, labels) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert matthews_corr(predictions, labels) == pytest.approx((3 * 3 - 1 * 1) / np.sqrt(4 * 4 * 4 * 4))
    assert matthews_corr(np.ones(8, int), labels) == 0.0  # constant predictor


def test_task_metrics_from_logits_and_scores():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    assert task_metrics(get_task("rte"), logits, np.array([0, 1, 1, 1]))["accuracy"] == 0.75
    scores = np.array([0.1, 0.5, 0.2, 0.9])
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    result = task_metrics(get_task("stsb"), scores[:, None], labels)
    assert result["pearson"] == pytest.approx(stats.pearsonr(scores, labels)[0])
    # score ranks 1,3,2,4 against 1,2,3,4: rho = 1 - 6 * (0+1+1+0) / (4 * (16 - 1)) = 0.8
    assert result["spearman"] == pytest.approx(0.8)
