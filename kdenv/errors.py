"""The one base of the errors kdenv raises about what it was given (a flag, a file, a table, a
model, data): every program maps a :class:`KdenvError` to one ``error:`` line (``kdenv.cli.run_main``),
never a traceback. Each subclass also keeps the built-in base it always had (``ValueError`` or
``RuntimeError``), so code that caught those still does."""

from __future__ import annotations


class KdenvError(Exception):
    """Something kdenv was given is wrong or missing; the message names it and the way on."""
