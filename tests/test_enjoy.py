"""agents/enjoy.py: rl_zoo3-trained agents replayed without running code from their files, and
crafted run folders (payloads in the zip's pickled items, in its weights, in config.yml) refused
or neutralised, never run."""

import base64
import io
import pickle
import zipfile

import pytest

from tests.conftest import command
from tests.tables import obvious_table
from tests.test_zoo import ZOO, zoo

pytestmark = pytest.mark.slow

ENV = "kdenv/KnowledgeSelectionTable-v0"
NAME = ENV.replace("/", "-")


class Payload:
    """Unpickling this creates ``marker``: the trace of code that ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def rewrite_zip(path, change):
    """The agent zip at ``path`` with ``change(name, bytes) -> bytes`` applied to each member."""
    members = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            members[name] = change(name, archive.read(name))
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    obvious_table(root / "table")
    zoo("train", "--algo", "a2c", "--env", ENV, "-conf", str(ZOO / "a2c.yml"), "--env-kwargs",
        f"table:'{root / 'table'}'", "-n", "200", "-f", str(root / "logs"), "--eval-freq", "-1", "--seed", "0")
    return root


def enjoy(root, *extra):
    return command("enjoy").main(["--algo", "a2c", "--env", ENV, "-f", str(root / "logs"), "--exp-id", "1",
                                  "--env-kwargs", f"table:'{root / 'table'}'", "-n", "3", "--deterministic", *extra])


def test_an_agent_trained_by_rl_zoo3_replays_safely(zoo_run, capsys):
    assert enjoy(zoo_run) == 0
    out = capsys.readouterr().out
    assert out.count("episode ") == 3 and "Mean reward:" in out


def test_payloads_in_the_zips_pickled_items_are_never_unpickled(zoo_run, tmp_path, capsys):
    import json
    import shutil

    root = tmp_path / "crafted"
    shutil.copytree(zoo_run, root)
    marker = tmp_path / "ran"
    crafted = {":serialized:": base64.b64encode(pickle.dumps(Payload(marker))).decode()}

    def inject(name, data):
        if name != "data":
            return data
        entries = json.loads(data)
        entries["policy_class"] = crafted
        entries["observation_space"] = crafted
        return json.dumps(entries).encode()

    zip_path = root / "logs" / "a2c" / f"{NAME}_1" / f"{NAME}.zip"
    rewrite_zip(zip_path, inject)
    assert enjoy(root) == 0 and "Mean reward:" in capsys.readouterr().out
    assert not marker.exists()  # the payload never ran; the agent still plays
    from stable_baselines3 import A2C

    with pytest.raises(Exception):  # noqa: B017  (the control: a plain load unpickles, and the payload runs)
        A2C.load(str(zip_path))
    assert marker.exists()
    marker.unlink()

    def unknown_item(name, data):
        if name != "data":
            return data
        entries = json.loads(data)
        entries["something_else"] = crafted
        return json.dumps(entries).encode()

    rewrite_zip(root / "logs" / "a2c" / f"{NAME}_1" / f"{NAME}.zip", unknown_item)
    assert enjoy(root) == 2
    assert "pickled entries ['something_else'] that kdenv cannot rebuild" in capsys.readouterr().err
    assert not marker.exists()


def test_a_payload_in_the_weights_is_refused_without_advice_that_would_run_it(zoo_run, tmp_path, capsys):
    import shutil

    import torch

    root = tmp_path / "crafted"
    shutil.copytree(zoo_run, root)
    marker = tmp_path / "ran"

    def poison(name, data):
        if name != "policy.pth":
            return data
        buffer = io.BytesIO()
        torch.save({"weights": Payload(marker)}, buffer)
        return buffer.getvalue()

    rewrite_zip(root / "logs" / "a2c" / f"{NAME}_1" / f"{NAME}.zip", poison)
    assert enjoy(root) == 2
    err = capsys.readouterr().err
    assert "its weights hold more than tensors" in err and "weights_only=False" not in err
    assert not marker.exists()


def test_code_in_config_yml_is_refused_before_anything_is_read(zoo_run, tmp_path, capsys):
    import shutil

    root = tmp_path / "crafted"
    shutil.copytree(zoo_run, root)
    marker = tmp_path / "ran"
    config = root / "logs" / "a2c" / f"{NAME}_1" / NAME / "config.yml"
    config.write_text(f"!!python/object/apply:builtins.open ['{marker}', 'w']\n")
    assert enjoy(root) == 2
    assert "is not a plain rl_zoo3 config" in capsys.readouterr().err and not marker.exists()


def test_policy_kwargs_are_parsed_as_literals_never_evaluated():
    import torch

    from kdenv.commands.enjoy import literal_policy_kwargs

    assert literal_policy_kwargs("dict(net_arch=[64, 64], activation_fn=nn.Tanh, ortho_init=False)") == {
        "net_arch": [64, 64], "activation_fn": torch.nn.Tanh, "ortho_init": False}
    for text in ("__import__('os').system('true')", "dict(x=open('f'))", "dict(a=nn.Module)"):
        with pytest.raises(ValueError, match="is not a literal dict"):
            literal_policy_kwargs(text)
