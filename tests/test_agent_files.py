"""Agent files are untrusted input: loading one never runs code from it.

A stable-baselines3 zip holds cloudpickled items in its ``data`` entry; unpickling one runs
whatever its author put there. kdenv rebuilds every item it can from the run record and refuses a
file that still holds another, unless the user opts in. The payload here is harmless: unpickling it
creates a marker file, so a test sees whether any code ran."""

import base64
import copy
import io
import json
import zipfile

import numpy as np
import pytest
import yaml

from kdenv.config import EnvConfig, to_dict
from kdenv.decision.algorithms import ALGORITHMS, SavedAgent, load_hyperparams, save_agent
from kdenv.decision.env import SpacesOnlyEnv
from kdenv.decision.wrappers import MultiDiscreteOnOff

KNOWLEDGE = ["logits", "hidden", "gradient"]


class Payload:
    """Unpickled, it opens (creates) the marker file: a stand-in for `os.system("...")`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def saved_agent(tmp_path, algo="a2c"):
    """A small trained agent saved as kdenv saves one: agent.zip and config.yaml side by side."""
    algorithm = ALGORITHMS[algo]
    config = EnvConfig(knowledge=KNOWLEDGE, action_space=algorithm.action_space, phases=2, updates_per_phase=1)
    env = SpacesOnlyEnv(config)
    env = MultiDiscreteOnOff(env) if algorithm.wrap_multidiscrete else env
    hyperparams = load_hyperparams(algo)
    model = algorithm.build(hyperparams.policy, env, seed=0, verbose=0, **copy.deepcopy(hyperparams.kwargs))
    run = tmp_path / f"{algo}_run"
    run.mkdir()
    save_agent(model, run / "agent.zip")
    (run / "config.yaml").write_text(yaml.safe_dump({"env": to_dict(config), "agent": {
        "algo": algo, "hyperparams": hyperparams.as_dict()}}))
    return run / "agent.zip", model, env


def tamper(path, key, marker):
    """Rewrites the zip with ``data[key]`` replaced by a pickled payload (a new key if absent)."""
    import cloudpickle

    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(entries["data"])
    data[key] = {":type:": "<class 'object'>", ":serialized:": base64.b64encode(cloudpickle.dumps(Payload(marker))).decode()}
    entries["data"] = json.dumps(data).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithm_loads_from_its_record_without_unpickling_and_acts_the_same(algo, tmp_path, monkeypatch):
    import cloudpickle

    path, model, env = saved_agent(tmp_path, algo)
    calls = []
    monkeypatch.setattr(cloudpickle, "loads", lambda *a, **k: calls.append(a) or pytest.fail("cloudpickle.loads ran"))
    loaded = SavedAgent.open(path).load()
    assert not calls
    observations = np.stack([env.observation_space.sample() for _ in range(16)])
    for observation in observations:
        assert np.array_equal(loaded.predict(observation, deterministic=True)[0],
                              model.predict(observation, deterministic=True)[0])
    for name, parameter in model.policy.state_dict().items():
        assert parameter.equal(loaded.policy.state_dict()[name]), name
    assert loaded.observation_space == model.observation_space and loaded.action_space == model.action_space


@pytest.mark.parametrize("key", ["policy_class", "lr_schedule", "observation_space", "_last_obs"])
def test_a_payload_in_an_item_kdenv_rebuilds_never_runs(key, tmp_path):
    path, _, _ = saved_agent(tmp_path)
    marker = tmp_path / "pwned"
    tamper(path, key, marker)
    loaded = SavedAgent.open(path).load()
    assert not marker.exists()
    assert loaded.policy is not None


def test_a_payload_kdenv_cannot_rebuild_is_refused_unless_the_user_trusts_the_file(tmp_path):
    path, _, _ = saved_agent(tmp_path)
    marker = tmp_path / "pwned"
    tamper(path, "surprise", marker)
    saved = SavedAgent.open(path)
    with pytest.raises(ValueError, match=r"pickled entries \['surprise'\].*--unsafe-load-agents"):
        saved.check_safe()
    with pytest.raises(ValueError, match="surprise"):
        saved.load()
    assert not marker.exists()
    # The opt-in really unpickles: the same file then runs its payload (so the refusal above is what saved us).
    saved.load(allow_pickle=True)
    assert marker.exists()


def test_evaluate_refuses_a_crafted_agent_before_any_work(tmp_path, glue_dir, capsys):
    from tests.conftest import command

    path, _, _ = saved_agent(tmp_path)
    marker = tmp_path / "pwned"
    tamper(path, "surprise", marker)
    out = tmp_path / "eval"
    code = command("evaluate").main(["--task", "wnli", "--data-dir", str(glue_dir), "--policies", f"agent:{path}",
                                     "--num-seeds", "1", "--output-dir", str(out), "--no-progress"])
    assert code == 2 and "--unsafe-load-agents" in capsys.readouterr().err
    assert not marker.exists() and not out.exists()


def test_a_file_that_is_not_an_agent_zip_is_refused_clearly(tmp_path):
    path, _, _ = saved_agent(tmp_path)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="is not a stable-baselines3 agent zip"):
        SavedAgent.open(path).load()
