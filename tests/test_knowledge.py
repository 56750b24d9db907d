"""Each knowledge loss against an independent computation: every example run on its own, without
padding, with plain formulas. This checks the maths and the padding masks at once."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdenv.engine.data import collate
from kdenv.engine.knowledge import (
    KnowledgeError,
    KnowledgeSetup,
    StepContext,
    StudentNeeds,
    build_knowledge,
    teacher_outputs,
)
from kdenv.engine.knowledge.base import confidence_gradients, default_layer_map
from kdenv.engine.models import student_from_teacher
from kdenv.engine.tasks import get_task
from tests.conftest import tiny_bert, toy_task_data

RTE = get_task("rte")
T = 5.0


def run_one(model, batch, row, **kwargs):
    """The model on one example alone, unpadded."""
    length = int(batch["attention_mask"][row].sum())
    with torch.no_grad():
        return model(input_ids=batch["input_ids"][row : row + 1, :length],
                     token_type_ids=batch["token_type_ids"][row : row + 1, :length], **kwargs)


def context(pair, names, options=None):
    teacher, student, batch = pair
    setup = KnowledgeSetup(RTE, student.config, teacher.config, options=options or {})
    modules = {name: build_knowledge(name, setup) for name in names}
    keys = set().union(*(m.teacher_keys() for m in modules.values()))
    needs = StudentNeeds()
    for m in modules.values():
        needs = needs | m.student_needs()
    outputs = student(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                      attention_mask=batch["attention_mask"], output_hidden_states=True, output_attentions=True)
    step = StepContext(RTE, batch, student, outputs.logits, outputs.hidden_states, outputs.attentions,
                       teacher_outputs(teacher, batch, RTE, keys), gradient_needs=needs)
    return modules, step


def rows(batch):
    return range(batch["input_ids"].shape[0])


def test_layer_map_default_matches_students_built_from_teacher_layers():
    assert default_layer_map(3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert default_layer_map(2, 4) == [(1, 2), (2, 4)]


def test_ce_and_logits(pair):
    teacher, student, batch = pair
    modules, step = context(pair, ["ce", "logits"])
    expected_ce = F.cross_entropy(step.student_logits, batch["labels"])
    assert modules["ce"](step).item() == pytest.approx(expected_ce.item(), rel=1e-6)
    kl = 0.0
    for i in rows(batch):
        p_teacher = (run_one(teacher, batch, i).logits[0] / T).softmax(-1)
        p_student = (run_one(student, batch, i).logits[0] / T).softmax(-1)
        kl += float((p_teacher * (p_teacher.log() - p_student.log())).sum().detach())
    assert modules["logits"](step).item() == pytest.approx(T * T * kl / len(rows(batch)), rel=1e-4)


def test_hidden_states_mse_over_real_tokens(pair):
    teacher, student, batch = pair
    modules, step = context(pair, ["hidden"])
    per_layer = []
    for s_layer, t_layer in [(1, 2), (2, 4)]:
        squared, count = 0.0, 0
        for i in rows(batch):
            h_s = run_one(student, batch, i, output_hidden_states=True).hidden_states[s_layer][0]
            h_t = run_one(teacher, batch, i, output_hidden_states=True).hidden_states[t_layer][0]
            squared += float(((h_s - h_t) ** 2).sum())
            count += h_s.numel()
        per_layer.append(squared / count)
    assert modules["hidden"](step).item() == pytest.approx(sum(per_layer) / 2, rel=1e-4)


def test_hidden_cls_only_is_pkd_normalised_distance(pair):
    teacher, student, batch = pair
    modules, step = context(pair, ["hidden"], {"cls_only": True})
    per_layer = []
    for s_layer, t_layer in [(1, 2), (2, 4)]:
        total = 0.0
        for i in rows(batch):
            c_s = run_one(student, batch, i, output_hidden_states=True).hidden_states[s_layer][0, 0]
            c_t = run_one(teacher, batch, i, output_hidden_states=True).hidden_states[t_layer][0, 0]
            total += float(((c_s / c_s.norm() - c_t / c_t.norm()) ** 2).sum())
        per_layer.append(total / len(rows(batch)))
    assert modules["hidden"](step).item() == pytest.approx(sum(per_layer) / 2, rel=1e-4)


def test_hidden_projection_when_sizes_differ():
    teacher = tiny_bert(layers=2, hidden=32)
    student = tiny_bert(layers=2, hidden=16)
    setup = KnowledgeSetup(RTE, student.config, teacher.config)
    module = build_knowledge("hidden", setup)
    assert {name: tuple(p.shape) for name, p in module.named_parameters()} == {
        "projections.1.weight": (32, 16), "projections.1.bias": (32,),
        "projections.2.weight": (32, 16), "projections.2.bias": (32,),
    }
    with pytest.raises(KnowledgeError, match="same hidden size"):
        build_knowledge("gradient", setup)


def test_attention_maps_mse_over_real_positions(pair):
    teacher, student, batch = pair
    modules, step = context(pair, ["attention"])
    per_layer = []
    for s_layer, t_layer in [(1, 2), (2, 4)]:
        squared, count = 0.0, 0
        for i in rows(batch):
            a_s = run_one(student, batch, i, output_attentions=True).attentions[s_layer - 1][0]
            a_t = run_one(teacher, batch, i, output_attentions=True).attentions[t_layer - 1][0]
            squared += float(((a_s - a_t) ** 2).sum())
            count += a_s.numel()
        per_layer.append(squared / count)
    assert modules["attention"](step).item() == pytest.approx(sum(per_layer) / 2, rel=1e-4)


def test_relation_fsp_matrices(pair):
    teacher, student, batch = pair
    modules, step = context(pair, ["relation"])
    layers = [(0, 0), (1, 2), (2, 4)]
    per_pair = []
    for (s_a, t_a), (s_b, t_b) in zip(layers, layers[1:]):
        total = 0.0
        for i in rows(batch):
            hs = run_one(student, batch, i, output_hidden_states=True).hidden_states
            ht = run_one(teacher, batch, i, output_hidden_states=True).hidden_states
            length = hs[0].shape[1]
            fsp_s = hs[s_a][0].T @ hs[s_b][0] / length
            fsp_t = ht[t_a][0].T @ ht[t_b][0] / length
            total += float(((fsp_s - fsp_t) ** 2).mean())
        per_pair.append(total / len(rows(batch)))
    assert modules["relation"](step).item() == pytest.approx(sum(per_pair) / 2, rel=1e-4)


def embedding_gradient_alone(model, batch, row):
    """d(max softmax prob)/d(embedding output) for one unpadded example, by a separate autograd path."""
    length = int(batch["attention_mask"][row].sum())
    ids = batch["input_ids"][row : row + 1, :length]
    types = batch["token_type_ids"][row : row + 1, :length]
    embedded = model.bert.embeddings(input_ids=ids, token_type_ids=types).detach().requires_grad_(True)
    hidden = embedded
    for layer in model.bert.encoder.layer:
        hidden = layer(hidden)[0] if isinstance(layer(hidden), tuple) else layer(hidden)
    logits = model.classifier(model.bert.pooler(hidden))
    (grad,) = torch.autograd.grad(logits.softmax(-1).max(), embedded)
    return grad[0]


def test_gradient_loss_matches_an_independent_per_example_computation(pair):
    teacher, student, batch = pair
    modules, step = context(pair, ["gradient"])
    squared, tokens = 0.0, 0
    for i in rows(batch):
        g_s = embedding_gradient_alone(student, batch, i)
        g_t = embedding_gradient_alone(teacher, batch, i)
        unit = lambda g: g / g.norm(dim=-1, keepdim=True)  # noqa: E731
        squared += float(((unit(g_s) - unit(g_t)) ** 2).sum())
        tokens += g_s.shape[0]
    assert modules["gradient"](step).item() == pytest.approx(squared / tokens, rel=1e-4)


def test_confidence_gradient_matches_finite_differences():
    model = tiny_bert(layers=2, seed=3).double().eval()
    batch = collate(toy_task_data(n_train=4)["train"], [0, 1], 0)
    gradient = confidence_gradients(model, batch, RTE, embedding=True, cls_layers=set(), create_graph=False)["grad.embedding"]
    delta = {}

    def shift(_module, _inputs, output):
        if "at" in delta:
            output = output.clone()
            output[delta["at"]] += delta["h"]
        return output

    handle = model.bert.embeddings.register_forward_hook(shift)

    def total_confidence():
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                           attention_mask=batch["attention_mask"]).logits
        return float(logits.softmax(-1).max(-1).values.sum())

    try:
        for at in [(0, 0, 3), (0, 2, 7), (1, 1, 0), (1, 4, 31)]:
            h = 1e-6
            delta.update(at=at, h=h)
            up = total_confidence()
            delta["h"] = -h
            down = total_confidence()
            assert gradient[at].item() == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-9)
    finally:
        handle.remove()


def test_double_backward_matches_finite_differences_of_the_gradient_loss(pair):
    teacher, _, batch = pair
    student = student_from_teacher(teacher, num_layers=2).double().eval()
    with torch.no_grad():
        for parameter in student.bert.encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    teacher64 = teacher.double()
    setup = KnowledgeSetup(RTE, student.config, teacher64.config)
    module = build_knowledge("gradient", setup)
    teacher_side = teacher_outputs(teacher64, batch, RTE, {"grad.embedding"})
    teacher_side = {k: v.double() for k, v in teacher_side.items()}

    def loss():
        step = StepContext(RTE, batch, student, None, None, None, teacher_side,
                           gradient_needs=StudentNeeds(embedding_gradient=True))
        return module(step)

    weight = student.bert.encoder.layer[0].attention.self.query.weight
    (analytic,) = torch.autograd.grad(loss(), weight)
    teacher.float()
    for at in [(0, 0), (5, 17), (31, 2)]:
        original = weight.data[at].item()
        h = 1e-6
        with torch.no_grad():
            weight.data[at] = original + h
            up = loss().item()
            weight.data[at] = original - h
            down = loss().item()
            weight.data[at] = original
        assert analytic[at].item() == pytest.approx((up - down) / (2 * h), rel=1e-3, abs=1e-8)
    assert analytic.abs().sum() > 0


def test_gradient_loss_ignores_extra_padding(pair):
    teacher, student, batch = pair
    modules, step = context(pair, ["gradient"])
    padded = {name: F.pad(t, (0, 5)) if t.dim() == 2 else t for name, t in batch.items()}
    wider = StepContext(RTE, padded, student, None, None, None, teacher_outputs(teacher, padded, RTE, {"grad.embedding"}),
                        gradient_needs=StudentNeeds(embedding_gradient=True))
    assert modules["gradient"](wider).item() == pytest.approx(modules["gradient"](step).item(), rel=1e-5)


def test_gradient_cls_sums_its_three_parts(pair):
    teacher, student, batch = pair
    modules, step = context(pair, ["gradient_cls", "gradient"])
    # Two student layers: the last is left out by default, so only (1, 2) is mapped.
    assert modules["gradient_cls"].pairs == [(1, 2)]
    n = len(rows(batch))
    cls_part, cls_grad_part = 0.0, 0.0
    for i in rows(batch):
        hs = run_one(student, batch, i, output_hidden_states=True).hidden_states[1][0, 0]
        ht = run_one(teacher, batch, i, output_hidden_states=True).hidden_states[2][0, 0]
        cls_part += float(((hs / hs.norm() - ht / ht.norm()) ** 2).sum()) / n
        length = int(batch["attention_mask"][i].sum())
        one = {k: v[i : i + 1, :length] for k, v in batch.items() if v.dim() == 2}
        gs = confidence_gradients(student, one, RTE, False, {1}, create_graph=False)["grad.cls.1"][0]
        gt = confidence_gradients(teacher, one, RTE, False, {2}, create_graph=False)["grad.cls.2"][0]
        cls_grad_part += float(((gs / gs.norm() - gt / gt.norm()) ** 2).sum()) / n
    expected = modules["gradient"](step).item() + cls_part + cls_grad_part
    assert modules["gradient_cls"](step).item() == pytest.approx(expected, rel=1e-4)


def test_knowledge_errors_are_clear(pair):
    teacher, student, _ = pair
    with pytest.raises(KnowledgeError, match="unknown knowledge type 'soft'"):
        build_knowledge("soft", KnowledgeSetup(RTE, student.config, teacher.config))
    with pytest.raises(KnowledgeError, match=r"layer map pair \(3, 2\) out of range"):
        KnowledgeSetup(RTE, student.config, teacher.config, layer_map=[(3, 2)])
    with pytest.raises(KnowledgeError, match="unknown options"):
        build_knowledge("hidden", KnowledgeSetup(RTE, student.config, teacher.config, options={"cls": True}))


def test_regression_uses_mse_for_logits_and_score_as_confidence():
    stsb = get_task("stsb")
    teacher = tiny_bert(layers=2, num_labels=1)
    setup = KnowledgeSetup(stsb, teacher.config, teacher.config)
    module = build_knowledge("logits", setup)
    student_scores = torch.tensor([[1.0], [2.0]])
    step = StepContext(stsb, {}, None, student_scores, None, None, {"logits": torch.tensor([[1.5], [2.0]])})
    assert module(step).item() == pytest.approx(0.125)
    assert math.isclose(float(teacher_confidence(stsb)), 0.5)


def teacher_confidence(task):
    from kdenv.engine.knowledge.base import confidence

    return confidence(task, torch.tensor([[0.5]]))[0]
