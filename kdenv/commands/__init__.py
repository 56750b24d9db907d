"""The programs behind the scripts in ``agents/``: one module each, with ``parse_args`` and
``main(argv) -> exit code``. They are installed as console scripts too (``kdenv-train``,
``kdenv-oracle``, ...: see pyproject.toml), so a wheel install runs them without the repository.
Nothing else in kdenv imports them."""
