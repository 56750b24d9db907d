"""Teacher–student consistency metrics on hand-made inputs with known answers."""

import numpy as np
import pytest
import torch

from kdenv.engine.inference import token_saliency
from kdenv.engine.metrics import label_loyalty, probability_loyalty, saliency_loyalty
from kdenv.engine.runtime import make_runtime
from kdenv.engine.tasks import get_task
from tests.conftest import tiny_bert, toy_task_data


def test_label_loyalty_known_answers():
    teacher = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert label_loyalty(teacher, teacher) == 1.0
    assert label_loyalty(teacher, -teacher) == 0.0  # every prediction flipped
    assert label_loyalty(teacher, np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])) == pytest.approx(2 / 3)


def test_probability_loyalty_known_answers():
    logits = np.array([[1.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    assert probability_loyalty(logits, logits) == pytest.approx(1.0)
    # Disjoint (near one-hot on different classes) distributions: JSD = 1 bit, loyalty 0.
    assert probability_loyalty(np.array([[50.0, -50.0]]), np.array([[-50.0, 50.0]])) == pytest.approx(0.0, abs=1e-9)
    # p = (1, 0), q = (0.5, 0.5): JSD = 1.5 - 0.75 log2(3) bits (computed by hand).
    jsd = 0.5 * np.log2(1 / 0.75) + 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25))
    assert probability_loyalty(np.array([[100.0, -100.0]]), np.array([[0.0, 0.0]])) == pytest.approx(1 - np.sqrt(jsd))


def test_saliency_loyalty_known_answers():
    a = [np.array([0.1, 0.5, 0.3, 0.9]), np.array([1.0, 2.0, 3.0])]
    assert saliency_loyalty(a, a) == pytest.approx(1.0)
    assert saliency_loyalty(a, [x * 10 + 1 for x in a]) == pytest.approx(1.0)  # rank-based: scale-free
    assert saliency_loyalty(a, [-x for x in a]) == pytest.approx(-1.0)
    assert saliency_loyalty([np.array([1.0, 1.0])], [np.array([0.2, 0.4])]) == 0.0  # no ranking


def test_token_saliency_of_identical_models_is_identical_and_ignores_padding():
    data = toy_task_data(n_train=8, n_eval=8)
    model = tiny_bert(layers=2, seed=0)
    runtime = make_runtime("cpu")
    rte = get_task("rte")
    batched = token_saliency(model, data["dev"], rte, 0, runtime, batch_size=4)
    single = token_saliency(model, data["dev"], rte, 0, runtime, batch_size=1)
    assert [len(s) for s in batched] == data["dev"].lengths.tolist()
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    assert saliency_loyalty(batched, single) == pytest.approx(1.0)
    assert all(np.all(s >= 0) for s in batched) and model.training  # train mode restored
    other = tiny_bert(layers=2, seed=5)
    with torch.no_grad():
        other.classifier.weight.mul_(-1)
    assert saliency_loyalty(batched, token_saliency(other, data["dev"], rte, 0, runtime)) < 0.99


def test_paired_difference_removes_the_seed_effect_shared_by_two_policies():
    from kdenv.stats import paired_difference

    # Seed 1 is a bad seed for both policies; the agent is ahead by 0.01, 0.02, 0.03.
    reference = {0: 0.80, 1: 0.70, 2: 0.78}
    agent = {0: 0.81, 1: 0.72, 2: 0.81, 5: 0.0}  # a seed the reference lacks is ignored
    paired = paired_difference(agent, reference)
    assert paired["mean"] == pytest.approx(0.02) and paired["n"] == 3
    assert paired["std"] == pytest.approx(0.01)  # sample std of (0.01, 0.02, 0.03), far below either policy's own
    low, high = paired["ci"]  # the bootstrap over seeds: within the observed differences, around the mean
    assert 0.01 - 1e-12 <= low < 0.02 < high <= 0.03 + 1e-12
    assert paired_difference({3: 0.5, 4: float("nan")}, {3: 0.25, 4: 0.1})["mean"] == 0.25  # undefined seeds left out
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({0: 0.5}, {1: 0.5})
