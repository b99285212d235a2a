"""Docs that execute: every `oneforcing` command in the README and in the docs pages it sends users to
(docs/commands.md, methods.md, toy_world.md, evaluation.md) parses with the real parsers."""

from __future__ import annotations

import re
import shlex
import sys

import pytest
from conftest import REPO_ROOT

from oneforcing.cli import OneForcingCLI
from oneforcing.commands import compare, evaluate, export, plan, tiny_wan, vbench
from oneforcing.commands import data as data_command
from oneforcing.commands import sample as sample_command
from oneforcing.commands import serve as serve_command

PARSERS = {"data": data_command, "sample": sample_command, "evaluate": evaluate, "compare": compare, "vbench": vbench,
           "tiny-wan": tiny_wan, "export": export, "plan": plan, "serve": serve_command}

README = (REPO_ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(?:bash)?\n(.*?)```", README, flags=re.S)
DOCS = [REPO_ROOT / "docs" / name for name in ("commands.md", "methods.md", "toy_world.md", "evaluation.md")]
DOC_BLOCKS = [b for doc in DOCS for b in re.findall(r"```(?:bash)?\n(.*?)```", doc.read_text(), flags=re.S)]
COMMANDS = [line.strip() for block in BLOCKS + DOC_BLOCKS for line in block.splitlines()
            if line.strip().startswith("oneforcing ")]


def test_readme_opens_with_the_two_setup_commands():
    first = [line.split("#")[0].strip() for line in BLOCKS[0].splitlines() if line.strip()]
    assert first == ["make demo", "make test"]
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^demo: ", makefile, flags=re.M) and re.search(r"^test: ", makefile, flags=re.M)


def test_readme_has_commands_for_each_entry_point():
    kinds = {shlex.split(c)[1] for c in COMMANDS}
    quick_start = {shlex.split(line.strip())[1] for block in BLOCKS for line in block.splitlines()
                   if line.strip().startswith("oneforcing ")}
    assert {"data", "fit", "sample", "evaluate", "compare"} <= quick_start, "the README's quick start"
    assert {"data", "fit", "sample", "evaluate", "compare", "vbench", "serve"} <= kinds, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", ["oneforcing"])
    args = shlex.split(command)[1:]
    if args[0] in PARSERS:
        PARSERS[args[0]].build_parser().parse_args(args[1:])
    elif args[0] == "fit":
        extra = [] if "--print_config" in args else ["--print_config"]
        with pytest.raises(SystemExit) as exit_:  # print_config exits after a full parse and validation
            OneForcingCLI(args=args + extra)
        assert exit_.value.code in (0, None), capsys.readouterr().err
    else:
        pytest.fail(f"README command {command!r} is not covered by this test")
