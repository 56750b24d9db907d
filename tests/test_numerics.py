"""The portable numerics mode: the same bits on every machine of one replay class.

The known answers below are fingerprints of the packaged MiniLM after three AdamW steps on four
STS-B-like sentences, one torch thread, in the portable mode, under torch 2.13.0 and transformers
5.24, one per replay class (kdenv.numerics.replay_class): MKL honours the AVX2 pin on Intel CPUs
only, and on other vendors runs its own dispatch (AUTO), which gives other bits. Each was computed
on a machine of its class: "MKL AVX2" on an Intel Xeon with AVX-512 (where each of the three kernel
pins changes these bits), "MKL AUTO on AuthenticAMD without AVX-512" on an AMD EPYC. On a machine
whose class has no known answer, or where the answer differs, the test fails: find out what
differs (docs/numerics.md) and extend the pinning, or record the class and its answer there and
here. It never checks a weaker promise."""

import json
import os
import subprocess
import sys

import pytest

from kdenv import numerics

KNOWN_ANSWERS = {
    "MKL AVX2": "6c6c3603d0c33bfdfa31",
    "MKL AUTO on AuthenticAMD without AVX-512": "bbd3652aebb8c2fe9b3a",
}
# The inference a table records besides training (teacher-cache outputs and scoring; THREE_STEPS'
# second half), per class. "MKL AVX2" measured on an Intel Xeon with AVX-512 VNNI and AMX (the
# fourth CPU model, 2026-12-06); the AMD class's answer is still to be measured on an AMD EPYC.
KNOWN_INFERENCE = {
    "MKL AVX2": "8a785e9756a4e5581960",
}

THREE_STEPS = """
import json, kdenv, torch
from kdenv import numerics
from kdenv.engine.models import load_classifier, load_tokenizer
from kdenv.engine.tasks import get_task
from kdenv.engine.teacher_cache import model_fingerprint

torch.set_num_threads(1)
torch.manual_seed(0)
tokenizer = load_tokenizer("minilm")
model = load_classifier("minilm", get_task("stsb"), attn_implementation="eager").train()
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
batch = tokenizer(["a man is playing a guitar.", "a woman is slicing an onion into pieces for dinner.",
                   "two dogs run.", "the sky is blue today and tomorrow too"], padding=True, return_tensors="pt")
labels = torch.tensor([0.5, 3.2, 1.0, 4.4])
for _ in range(3):
    loss = torch.nn.functional.mse_loss(model(**batch).logits.squeeze(-1), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

# What a table records beyond training: the teacher cache's inference (eval mode, no gradients, a
# padded batch with its attention mask, SDPA attention as the trainer loads models; logits, hidden
# states and the confidence gradient GKD caches) and scoring (the student's eval-mode outputs).
import hashlib
from kdenv.engine.knowledge.base import teacher_outputs
model.eval()
inference = load_classifier("minilm", get_task("stsb"))
inference.load_state_dict(model.state_dict())
inference.eval()
texts = ["a man is playing a guitar.", "two dogs run in the park while a child watches them from a bench",
         "the sky is blue", "a woman slices an onion.", "nobody is here"]
padded = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=True)
outputs = teacher_outputs(inference, dict(padded), get_task("stsb"), {"logits", "hidden.3", "grad.embedding"})
digest = hashlib.sha256()
for name in sorted(outputs):
    digest.update(name.encode())
    digest.update(outputs[name].detach().float().contiguous().numpy().tobytes())
print(json.dumps({"fingerprint": model_fingerprint(model), "inference": digest.hexdigest()[:20],
                  "numerics": numerics.describe()}))
"""


def three_steps(**env_changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV and k != numerics.MODE_ENV}
    env.update(env_changes)
    result = subprocess.run([sys.executable, "-c", THREE_STEPS], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_three_pinned_steps_and_the_inference_a_table_records_give_the_known_bits_of_this_replay_class():
    found = three_steps()
    described = found["numerics"]
    assert described["portable"] is True and described["aten_cpu_capability"] == "AVX2"
    klass = numerics.replay_class(described)
    assert klass == numerics.replay_class(numerics.describe())  # the subprocess's class is this machine's
    assert klass in KNOWN_ANSWERS, (
        f"no known answer for this machine's replay class ({klass}; {described['cpu']}, MKL branch "
        f"{described['mkl_branch']}): portable tables of this class are untested; measure it, then record it "
        "in docs/numerics.md and KNOWN_ANSWERS")
    assert found["fingerprint"] == KNOWN_ANSWERS[klass], (
        f"the portable numerics mode gave other bits on this machine ({described['cpu']}, {klass}) than on the "
        "machine its class's known answer came from: tables of that class will not replay exactly here; see "
        "docs/numerics.md")
    assert klass in KNOWN_INFERENCE, (
        f"no known inference answer for this machine's replay class ({klass}): it measures {found['inference']}; "
        "if the training answer above matched, record it in KNOWN_INFERENCE and docs/numerics.md")
    assert found["inference"] == KNOWN_INFERENCE[klass], (
        f"teacher-cache inference and scoring gave other bits on this machine ({described['cpu']}, {klass}: "
        f"{found['inference']}) than on the machine of its class's known answer: the teacher caches and scores a "
        "table records will differ here; see docs/numerics.md")


def test_the_replay_class_is_mkls_branch_and_for_its_own_dispatch_the_cpu_vendor():
    intel_before_classes = {"portable": True, "cpu": "Intel(R) Xeon(R) Processor", "pins": {"MKL_CBWR": "AVX2,STRICT"}}
    assert numerics.replay_class(intel_before_classes) == "MKL AVX2"
    assert "Intel x86-64 CPUs" in numerics.replay_where(intel_before_classes)
    amd = {"portable": True, "cpu": "AMD EPYC", "cpu_vendor": "AuthenticAMD", "avx512": False, "mkl_branch": "AUTO"}
    assert numerics.replay_class(amd) == "MKL AUTO on AuthenticAMD without AVX-512"
    assert numerics.replay_class({**amd, "avx512": True}) != numerics.replay_class(amd)
    assert numerics.replay_class({**amd, "mkl_branch": "COMPATIBLE"}) == "MKL COMPATIBLE"
    assert numerics.replay_class({**amd, "portable": False}) is None and numerics.replay_class(None) is None
    here = numerics.describe()
    assert here["mkl_branch"] in numerics.MKL_BRANCHES.values()  # MKL answered
    assert here["mkl_branch"] == ("AVX2" if here["cpu_vendor"] == "GenuineIntel" else "AUTO")


def test_this_process_runs_in_the_portable_mode():
    """The tests import kdenv before torch, as every kdenv program does: the pins are in force."""
    described = numerics.describe()
    assert described["mode"] == "portable" and described["portable"] is True
    assert described["pins"] == numerics.PORTABLE_ENV


@pytest.mark.slow
def test_torch_imported_before_kdenv_is_not_portable_and_table_work_is_refused():
    code = ("import torch, kdenv\nfrom kdenv import numerics\nprint(numerics.in_force())\n"
            "try:\n    numerics.require_portable('a tree build')\nexcept numerics.NumericsError as e:\n    print(e)")
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert out.splitlines()[0] == "False" and "torch was imported before kdenv" in out


def test_native_numerics_are_a_choice_that_is_recorded(monkeypatch):
    monkeypatch.setenv(numerics.MODE_ENV, "native")
    numerics.require_portable("a tree build")  # allowed: the user chose numerics for this CPU only
    assert numerics.describe()["mode"] == "native"
    monkeypatch.setenv(numerics.MODE_ENV, "fast")
    with pytest.raises(ValueError, match="KDENV_NUMERICS='fast': choose one of portable, native"):
        numerics.requested_mode()


@pytest.mark.slow
def test_a_mistyped_numerics_mode_is_one_error_line_not_an_import_traceback(tmp_path):
    env = {**os.environ, numerics.MODE_ENV: "garbage", "KDENV_RUNS_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "agents/oracle.py", "--table", "stsb"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: KDENV_NUMERICS='garbage': choose one of portable, native (or unset it: portable)")
