import pytest
import torch
from transformers import BertTokenizerFast

from kdenv.engine.models import (
    ModelError,
    check_same_vocabulary,
    evenly_spaced_layers,
    load_classifier,
    resolve_model_source,
    save_model,
    student_from_teacher,
)
from kdenv.engine.tasks import get_task


def test_evenly_spaced_layers_end_at_the_top():
    assert evenly_spaced_layers(6, 3) == [1, 3, 5]
    assert evenly_spaced_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    assert evenly_spaced_layers(6, 6) == list(range(6))
    with pytest.raises(ModelError):
        evenly_spaced_layers(6, 7)


def test_student_copies_the_chosen_teacher_layers(tiny_bert_factory):
    teacher = tiny_bert_factory(layers=4)
    student = student_from_teacher(teacher, layers=[1, 3])
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    t, s = teacher.state_dict(), student.state_dict()
    for name, value in s.items():
        if ".layer.0." in name:
            assert torch.equal(value, t[name.replace(".layer.0.", ".layer.1.")])
        elif ".layer.1." in name:
            assert torch.equal(value, t[name.replace(".layer.1.", ".layer.3.")])
        else:
            assert torch.equal(value, t[name]), name  # embeddings, pooler, classifier
    # Keeping every layer reproduces the teacher exactly.
    full = student_from_teacher(teacher, layers=[0, 1, 2, 3]).eval()
    ids = torch.randint(1000, 2000, (2, 7))
    assert torch.allclose(full(input_ids=ids).logits, teacher.eval()(input_ids=ids).logits)
    assert student_from_teacher(teacher, num_layers=2).config.num_hidden_layers == 2


def test_student_rejects_bad_layer_lists(tiny_bert_factory):
    teacher = tiny_bert_factory(layers=4)
    for layers in ([4], [1, 1], []):
        with pytest.raises(ModelError, match="distinct teacher layers"):
            student_from_teacher(teacher, layers=layers)


def test_vocabulary_mismatch_is_a_clear_error(tmp_path, tokenizer):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]) + "\n")
    other = BertTokenizerFast(vocab_file=str(vocab))
    with pytest.raises(ModelError, match="vocabularies differ"):
        check_same_vocabulary(tokenizer, other)
    check_same_vocabulary(tokenizer, tokenizer)


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_source(str(tmp_path / "no_such_model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model_source(str(tmp_path / "empty"))
    assert resolve_model_source("bert-base-uncased") == "bert-base-uncased"  # a hub id passes through
    assert resolve_model_source("minilm").endswith("model")


def test_eager_attention_is_a_load_option(tmp_path, tiny_bert_factory, tokenizer):
    save_model(tiny_bert_factory(), tokenizer, tmp_path / "m", {"note": "test"})
    sdpa = load_classifier(tmp_path / "m", get_task("rte"))
    eager = load_classifier(tmp_path / "m", get_task("rte"), attn_implementation="eager")
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    out = eager(input_ids=torch.randint(1000, 2000, (1, 5)), output_attentions=True)
    assert len(out.attentions) == 4 and out.attentions[0].shape == (1, 4, 5, 5)
    with pytest.raises(ModelError, match="unknown attention implementation"):
        load_classifier(tmp_path / "m", get_task("rte"), attn_implementation="flash")


def test_save_model_leaves_nothing_behind_on_failure(tmp_path, tiny_bert_factory, tokenizer):
    target = tmp_path / "teacher"
    save_model(tiny_bert_factory(), tokenizer, target, {"version": 1})

    def fail(_):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_model(tiny_bert_factory(seed=1), tokenizer, target, {"version": 2}, write_extra=fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]  # no temporary folder left
    assert '"version": 1' in (target / "kdenv.json").read_text()
