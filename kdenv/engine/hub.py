"""Whether the Hugging Face hub can be reached: one quick probe a process, so that an offline machine
reads the local caches at once instead of spending half a minute in retries on every file.

The probe opens a TCP connection to the hub's host (``HF_ENDPOINT``, else huggingface.co) with a short
timeout. Behind a proxy (``HTTPS_PROXY``/``ALL_PROXY``) a direct connection says nothing, so no probe is
made there and the libraries behave as they always do; likewise when offline mode is already set.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from collections.abc import Iterator
from unittest import mock
from urllib.parse import urlparse

PROBE_SECONDS = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def probe(endpoint: str, timeout: float = PROBE_SECONDS) -> str | None:
    """None when ``endpoint``'s host accepts a TCP connection within ``timeout`` seconds; else why not."""
    parsed = urlparse(endpoint)
    host = parsed.hostname
    if not host:
        return f"{endpoint!r} names no host"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    outcome: list[str | None] = []

    def connect() -> None:  # in a thread: a name lookup does not heed the socket's timeout
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"{host}:{port} did not answer ({error})")

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return outcome[0] if outcome else f"{host}:{port} did not answer within {timeout:g} s"


@functools.cache
def unreachable() -> str | None:
    """Why the hub cannot be reached from this process (probed once), or None when it can or when a
    proxy makes a direct probe meaningless."""
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    return probe(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)


@contextlib.contextmanager
def datasets_offline_if_unreachable() -> Iterator[str | None]:
    """Inside: ``datasets`` reads only its local cache when the hub cannot be reached (what it would do
    after its retries, without them). Yields why the hub was unreachable, or None."""
    import datasets

    if getattr(datasets.config, "HF_HUB_OFFLINE", True):  # already offline (or a datasets without the switch)
        yield None
        return
    why = unreachable()
    if why is None:
        yield None
        return
    with mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True):
        yield why


def offline_note(why: str | None) -> str:
    """The sentence an error adds when the hub was found unreachable and only the cache was read."""
    return f" (the hub was unreachable: {why}; only the local cache was read)" if why else ""
