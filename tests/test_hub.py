"""The hub probe: an offline machine reads the local caches at once instead of retrying for half a
minute per file; a reachable hub (or a proxy) leaves the libraries as they are."""

import socket

import pytest

from kdenv.engine import hub, models
from kdenv.engine.data import DataError, load_hub_split
from kdenv.engine.tasks import get_task


def test_probe_tells_a_listening_port_from_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert hub.probe(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=2) is None
    with socket.socket() as spare:  # a port nobody listens on
        spare.bind(("127.0.0.1", 0))
        closed = spare.getsockname()[1]
    why = hub.probe(f"http://127.0.0.1:{closed}", timeout=2)
    assert why is not None and f"127.0.0.1:{closed}" in why
    assert "names no host" in hub.probe("not a url")


def test_no_probe_behind_a_proxy(monkeypatch):
    def must_not_probe(*args, **kwargs):
        raise AssertionError("probed behind a proxy")

    monkeypatch.setattr(hub, "probe", must_not_probe)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    hub.unreachable.cache_clear()
    try:
        assert hub.unreachable() is None
    finally:
        hub.unreachable.cache_clear()


def test_unreachable_hub_switches_datasets_to_its_cache_for_the_call_only(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "unreachable", lambda: "huggingface.co:443 did not answer")
    with hub.datasets_offline_if_unreachable() as why:
        assert datasets.config.HF_HUB_OFFLINE is True and "did not answer" in why
    assert datasets.config.HF_HUB_OFFLINE is False
    monkeypatch.setattr(hub, "unreachable", lambda: None)
    with hub.datasets_offline_if_unreachable() as why:
        assert datasets.config.HF_HUB_OFFLINE is False and why is None


def test_glue_from_an_unreachable_hub_fails_at_once_and_says_why(monkeypatch):
    import datasets

    seen = []

    def load_dataset(*args, **kwargs):
        seen.append(datasets.config.HF_HUB_OFFLINE)
        raise ConnectionError("offline and not cached")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(hub, "unreachable", lambda: "huggingface.co:443 did not answer")
    with pytest.raises(DataError, match=r"hub was unreachable: huggingface.co:443.*KDENV_GLUE_DIR"):
        load_hub_split(get_task("rte"), "validation")
    assert seen == [True]


@pytest.mark.parametrize("why, expected", [("huggingface.co:443 did not answer", True), (None, False)])
def test_hub_ids_read_only_the_cache_while_the_hub_is_unreachable(monkeypatch, why, expected):
    monkeypatch.setattr(hub, "unreachable", lambda: why)
    assert models._local_files_only("bert-base-uncased") is expected
    assert models._local_files_only(str(models.packaged_model_dir())) is True  # a folder: always local
    assert ("hub was unreachable" in models._offline_note("bert-base-uncased")) is expected
