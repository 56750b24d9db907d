"""Every `python agents/...` command shown in README.md and docs/ still parses with today's flags,
names a table that exists and an --hp-file that exists: the docs cannot drift from the code
unnoticed. (Parsing only: running them all would take hours.)"""

import importlib
import re
import shlex

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), REPO / "kdenv" / "tables" / "README.md"]
PLACEHOLDERS = {"<table>": "stsb_u8", "<run>": "run", "<time>": "20260101-000000", "<task>": "stsb", "<algo>": "ppo", "<N>": "0",
                "<path>": "runs/x/agent.zip"}


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        lines, fenced = [], False
        for line in text.replace("\\\n", " ").splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
            elif fenced:
                lines.append(line)
        inline = [" ".join(span.split()) for span in re.findall(r"`(python agents/[^`]+)`", text)]
        for command in [*lines, *inline]:
            command = command.split(" #")[0].strip()
            if command.startswith(("python agents/", "python3 agents/")) and "…" not in command and "..." not in command:
                found.append((page.relative_to(REPO).as_posix(), command))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) > 20


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_a_documented_command_parses(page, command, monkeypatch):
    from kdenv.benchmark.table import table_path

    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    command = re.sub(r"\{([^,}]+)(,[^}]*)?\}", r"\1", command)  # {a2c,ppo,dqn} -> a2c
    words = shlex.split(command)
    script = words[1].removeprefix("agents/").removesuffix(".py")
    argv = [w for w in words[2:] if w not in ("|", ">")]
    module = importlib.import_module(f"kdenv.commands.{'train' if script == 'train_a2c' else script}")
    try:
        args = module.parse_args(argv, default_algo="a2c") if script == "train_a2c" else module.parse_args(argv)
    except SystemExit as exit:
        pytest.fail(f"{page}: `{command}` does not parse (exit {exit.code})")
    table = getattr(args, "table", None)
    if table and "runs/" not in table:
        assert (table_path(table) / "manifest.json").is_file(), f"{page}: `{command}` names no existing table"
    hp_file = getattr(args, "hp_file", None)
    if hp_file and not hp_file.startswith("runs/"):
        assert (REPO / hp_file).is_file(), f"{page}: `{command}` names a missing --hp-file"
