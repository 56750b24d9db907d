"""Any encoder as teacher or student (issue: your own task, teacher and student): tiny randomly
initialised models of five families (BERT, DistilBERT, RoBERTa, ELECTRA, DeBERTa-v2) saved as local
folders, through the teacher fine-tune, a live episode, a tiny tree and its table environment, and
evaluate.py, on task files the tests write; and each way a pair of models can be refused, refused
before a teacher is fine-tuned."""

import csv
import json
import random
import re

import gymnasium
import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertTokenizerFast,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    RobertaConfig,
)

import kdenv  # noqa: F401  (registers the environments)
from kdenv.config import DataConfig
from kdenv.engine.data import model_inputs
from kdenv.engine.models import ModelError, load_classifier, save_model, set_dropout, student_from_teacher
from kdenv.engine.tasks import get_task
from tests.conftest import command

SIZE = {"vocab_size": 30522, "max_position_embeddings": 160}
FAMILIES = {
    "bert": lambda labels: BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                      intermediate_size=64, num_labels=labels, **SIZE),
    "distilbert": lambda labels: DistilBertConfig(dim=32, n_layers=4, n_heads=4, hidden_dim=64, num_labels=labels,
                                                  **SIZE),
    # RoBERTa's real checkpoints have one segment row: a pair's second-segment ids would index past it
    "roberta": lambda labels: RobertaConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                            intermediate_size=64, type_vocab_size=1, pad_token_id=0,
                                            num_labels=labels, **{**SIZE, "max_position_embeddings": 162}),
    "electra": lambda labels: ElectraConfig(embedding_size=32, hidden_size=32, num_hidden_layers=4,
                                            num_attention_heads=4, intermediate_size=64, num_labels=labels, **SIZE),
    "deberta-v2": lambda labels: DebertaV2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                                 intermediate_size=64, relative_attention=True, position_buckets=16,
                                                 pos_att_type=["p2c", "c2p"], num_labels=labels, **SIZE),
}
END_TO_END = ["distilbert", "roberta", "deberta-v2"]  # three families besides the default model's BERT


def tiny(family: str, labels: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(FAMILIES[family](labels))


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    """Each family saved as a local model folder with the MiniLM tokenizer (a WordPiece vocabulary)."""
    root = tmp_path_factory.mktemp("families")
    for family in FAMILIES:
        save_model(tiny(family), tokenizer, root / family, {})
    return root


def pair_task(folder, kind="classification"):
    """A small pair task written as CSV: the label says whether the first text holds 'good' (a score in
    [0, 5] for regression). Label names [no, yes] are unquoted YAML, which YAML 1.1 would read as booleans.
    Named after its folder: one process registers each task name once."""
    rng = random.Random(0)
    words = "good bad film plot actor warm dull sharp flat quiet".split()
    for split, count in (("train", 120), ("dev", 40)):
        with open(folder / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["first", "second", "label"])
            for i in range(count):
                first = " ".join(rng.choices(words, k=5))
                second = " ".join(rng.choices(words, k=4)) + f" {split} {i}"
                good = "good" in first.split()
                label = ("yes" if good else "no") if kind == "classification" else f"{4.5 if good else 0.5:.1f}"
                writer.writerow([first, second, label])
    labels = "labels: [no, yes]\n" if kind == "classification" else ""
    name = re.sub(r"\W", "_", f"{kind}_{folder.name}")
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\ntrain: train.csv\ndev: dev.csv\ntext: [first, second]\nlabel: label\n"
                    f"type: {kind}\n{labels}")
    return path


def pair_batch(tokenizer):
    encoded = tokenizer(["a warm film", "a dull plot"], ["good", "bad acting"], padding=True, return_tensors="pt",
                        return_token_type_ids=True)
    return {key: encoded[key] for key in ("input_ids", "token_type_ids", "attention_mask")}


# ------------------------------------------------------------------ the families' differences


def test_segment_ids_go_only_to_models_with_a_segment_table(tokenizer):
    """A pair's second segment has id 1: BERT and ELECTRA embed it; DistilBERT and DeBERTa-v2 have no
    segment table, RoBERTa one row, so they get none (RoBERTa would otherwise index past its table)."""
    batch = pair_batch(tokenizer)
    assert batch["token_type_ids"].max() == 1
    takes = {family: "token_type_ids" in model_inputs(tiny(family), batch) for family in FAMILIES}
    assert takes == {"bert": True, "distilbert": False, "roberta": False, "electra": True, "deberta-v2": False}
    roberta = tiny("roberta").eval()
    with pytest.raises(IndexError):
        roberta(**batch)  # what every forward did before: the segment ids reached a one-row table
    assert torch.isfinite(roberta(**model_inputs(roberta, batch)).logits).all()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_student_from_each_family_keeps_its_layers_and_takes_its_dropout(family, tokenizer):
    """student_from_teacher keeps the chosen layers of any family (their weights copied), and
    --student-dropout reaches every dropout module, whatever the family calls its probabilities."""
    teacher = tiny(family).eval()
    student = student_from_teacher(teacher, layers=[1, 3], dropout=0.0).eval()
    assert student.config.num_hidden_layers == 2
    dropouts = [module.p for module in student.modules() if isinstance(module, torch.nn.Dropout)]
    assert dropouts and all(p == 0.0 for p in dropouts), dropouts
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    copied = [key for key in student_state if ".0." in key and "layer" in key]
    assert copied, "no encoder layer weights in the student"
    for key in copied:  # student layer 0 is teacher layer 1
        assert torch.equal(student_state[key], teacher_state[key.replace(".0.", ".1.", 1)]), key
    batch = model_inputs(student, pair_batch(tokenizer))
    assert torch.isfinite(student(**batch).logits).all()


def test_a_fresh_head_resets_distilberts_pre_classifier_too():
    teacher = tiny("distilbert")
    student = student_from_teacher(teacher, num_layers=2, fresh_head=True)
    for key in ("pre_classifier.weight", "classifier.weight"):
        assert not torch.equal(student.state_dict()[key], teacher.state_dict()[key]), key
    assert torch.equal(student.state_dict()["distilbert.embeddings.word_embeddings.weight"],
                       teacher.state_dict()["distilbert.embeddings.word_embeddings.weight"])


def test_a_config_without_dropout_is_refused_by_name():
    class NoDropout:
        def to_dict(self):
            return {"hidden_size": 8}

    with pytest.raises(ModelError, match="names no dropout probability"):
        set_dropout(NoDropout(), 0.0)


def test_deberta_v2_loads_with_eager_attention_where_sdpa_is_not_offered(folders):
    """DeBERTa-v2 has no sdpa attention in transformers: the default load falls back to eager."""
    model = load_classifier(folders / "deberta-v2", num_labels=2)
    assert model.config._attn_implementation == "eager"
    assert load_classifier(folders / "bert", num_labels=2).config._attn_implementation == "sdpa"


# ------------------------------------------------------------------ end to end, per family


@pytest.mark.parametrize("family", END_TO_END)
def test_a_family_runs_from_teacher_to_evaluation(family, folders, tmp_path, private_runs_dir):
    """The teacher fine-tune from a local folder, a live episode through gymnasium.make with every
    knowledge type that applies, and evaluate.py, on a pair-classification task file."""
    task = str(pair_task(tmp_path))
    assert command("finetune_teacher").main(["--task", task, "--model", str(folders / family), "--epochs", "1",
                                             "--max-steps", "2", "--no-progress"]) == 0
    teacher = json.loads((private_runs_dir / "teachers" / get_task(task).name / "kdenv.json").read_text())
    assert teacher["base_model"] == str(folders / family) and teacher["base_model_fingerprint"]
    assert teacher["task_files_sha256"] and teacher["finetune"]["model"] == str(folders / family)

    knowledge = ["logits", "hidden", "attention", "relation", "gradient"]
    env = gymnasium.make("kdenv/KnowledgeSelection-v0", task=task,
                         env_config={"phases": 2, "updates_per_phase": 1, "knowledge": knowledge},
                         data_config=DataConfig(task=task, max_train_examples=32, max_reward_examples=16))
    try:
        observation, _ = env.reset(seed=0)
        done, rewards = False, []
        while not done:
            observation, reward, terminated, truncated, info = env.step(np.ones(len(knowledge), dtype=np.int8))
            rewards.append(reward)
            done = terminated or truncated
        assert len(rewards) == 2 and np.isfinite(rewards).all() and np.isfinite(observation).all()
    finally:
        env.close()

    out = tmp_path / "eval"
    assert command("evaluate").main(["--task", task, "--knowledge", ",".join(knowledge), "--policies", "kd,all",
                                     "--num-seeds", "1", "--phases", "2", "--updates-per-phase", "1",
                                     "--max-train-examples", "32", "--max-reward-examples", "16", "--no-progress",
                                     "--output-dir", str(out)]) == 0
    runs = json.loads((out / "runs.json").read_text())
    assert {run["policy"] for run in runs} == {"kd", "all"} and all(0 <= run["dev"]["accuracy"] <= 1 for run in runs)


def test_a_tiny_tree_of_a_regression_task_file_gives_a_table_environment(folders, tmp_path, private_runs_dir, capsys):
    """RoBERTa (a two-label head, replaced by a one-output head) on a regression task file: the teacher
    fine-tuned from --teacher-model's folder, a 2-phase tree over two knowledge types, its table, and an
    episode of the table environment."""
    from kdenv.benchmark.table import Table

    task = str(pair_task(tmp_path, kind="regression"))
    table_dir = tmp_path / "table"  # no teacher yet: --teacher-model names the folder it is fine-tuned from
    assert command("build_tree").main(["--task", task, "--teacher-model", str(folders / "roberta"), "--seeds", "0",
                                       "--knowledge", "logits,gradient", "--phases",
                                       "2", "--updates-per-phase", "1", "--max-train-examples", "32",
                                       "--max-reward-examples", "16", "--threads", "1", "--output", str(table_dir),
                                       "--no-progress"]) == 0
    assert "has a head of 2 output(s)" in capsys.readouterr().out  # said once, when the teacher is fine-tuned
    table = Table.load(table_dir)
    assert table.manifest["task"] == task and table.manifest["teacher"]["task_files_sha256"]
    assert table.manifest["teacher"]["base_model"] == str(folders / "roberta")
    env = gymnasium.make("kdenv/KnowledgeSelectionTable-v0", table=str(table_dir))
    env.reset(seed=0)
    total, done = 0.0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(3)  # both types, every phase
        total += reward
        done = terminated or truncated
    assert np.isfinite(total) and total != 0.0


# ------------------------------------------------------------------ refused pairs, before any fine-tune


def test_a_student_with_another_vocabulary_is_refused_before_a_teacher_is_fine_tuned(folders, tmp_path,
                                                                                      private_runs_dir):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]) + "\n")
    other = tmp_path / "other_vocab"
    torch.manual_seed(0)
    save_model(AutoModelForSequenceClassification.from_config(BertConfig(
        vocab_size=7, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
        BertTokenizerFast(vocab_file=str(vocab)), other, {})
    task = str(pair_task(tmp_path))
    code = command("distill").main(["--task", task, "--teacher-model", str(folders / "bert"), "--student-model",
                                    str(other), "--knowledge", "logits", "--no-progress",
                                    "--output-dir", str(tmp_path / "out")])
    assert code != 0
    assert not (private_runs_dir / "teachers" / get_task(task).name).exists()  # refused before the fine-tune


def test_a_gradient_between_unequal_hidden_sizes_is_refused_in_one_line_before_a_fine_tune(folders, tokenizer,
                                                                                          tmp_path, capsys,
                                                                                          private_runs_dir):
    narrow = tmp_path / "narrow"
    torch.manual_seed(0)
    save_model(AutoModelForSequenceClassification.from_config(BertConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, **SIZE)), tokenizer,
        narrow, {})
    task = str(pair_task(tmp_path))
    code = command("distill").main(["--task", task, "--teacher-model", str(folders / "bert"), "--student-model",
                                    str(narrow), "--knowledge", "hidden,gradient", "--no-progress",
                                    "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0 and "same hidden size (16 vs 32)" in err and "leave gradient out of --knowledge" in err
    assert not (private_runs_dir / "teachers" / get_task(task).name).exists()


def test_a_teacher_is_never_mixed_with_changed_task_files_or_a_changed_base_folder(folders, tokenizer, tmp_path,
                                                                                  capsys, private_runs_dir):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(folders / "bert", base)
    task = pair_task(tmp_path)
    args = ["--task", str(task), "--policies", "kd", "--num-seeds", "1", "--phases", "1", "--updates-per-phase", "1",
            "--max-train-examples", "32", "--max-reward-examples", "16", "--no-progress"]
    assert command("finetune_teacher").main(["--task", str(task), "--model", str(base), "--epochs", "1",
                                             "--max-steps", "1", "--no-progress"]) == 0
    # the base folder is replaced by other weights under the same path
    save_model(tiny("bert", seed=1), tokenizer, base, {})
    code = command("evaluate").main([*args, "--teacher-model", str(base), "--output-dir", str(tmp_path / "e1")])
    assert code != 0 and f"changed since the saved {get_task(str(task)).name} teacher" in capsys.readouterr().err
    # the data file is edited after the teacher was fine-tuned on it
    with open(tmp_path / "train.csv", "a") as handle:
        handle.write("good good good,plot,yes\n")
    code = command("evaluate").main([*args, "--output-dir", str(tmp_path / "e2")])
    err = capsys.readouterr().err
    assert code != 0 and "was fine-tuned on other data" in err and "--force" in err


def test_a2c_learns_on_the_example_task_with_a_teacher_and_a_student_of_their_own(folders, tmp_path,
                                                                                   private_runs_dir):
    """train_a2c.py on examples/sentiment.yaml: the teacher fine-tuned from a DistilBERT folder named by
    --teacher-model (none is saved yet), a pre-trained ELECTRA student from --student-model; the run's
    record names both models' folders and fingerprints."""
    import yaml

    from tests.conftest import REPO

    out = tmp_path / "a2c"
    assert command("train").main(
        ["--task", str(REPO / "examples" / "sentiment.yaml"), "--teacher-model", str(folders / "distilbert"),
         "--student-model", str(folders / "electra"), "--phases", "2", "--updates-per-phase", "1",
         "--total-timesteps", "4", "--max-train-examples", "32", "--max-reward-examples", "16", "--baselines", "",
         "--output-dir", str(out), "--no-progress", "--hp", "n_steps=2"], default_algo="a2c") == 0
    record = yaml.safe_load((out / "config.yaml").read_text())
    assert record["teacher"]["base_model"] == str(folders / "distilbert") and record["teacher"]["task_files_sha256"]
    assert record["student"]["model"] == str(folders / "electra") and record["student"]["fingerprint"]
    assert (out / "agent.zip").is_file() and json.loads((out / "schedules.json").read_text())
