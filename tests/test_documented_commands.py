"""The `snakemake ...` command lines that the repository shows its users (README, docs, config and profile
comments, scripts) are ones Snakemake accepts as meant: every option exists, and no target hides behind an
option that takes several values (`--configfile config/quick.yaml all` reads `all` as a config file).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
snakemake_cli = pytest.importorskip("snakemake.cli")

# a `snakemake` command word: at a line's start, after a space, a backtick or a parenthesis (not a
# script's `snakemake = ...` or `snakemake is not None`)
COMMAND_RE = re.compile(r"(?:^|[\s`(])snakemake(?=\s)(?!\s*(?:=|is\s))(?P<rest>[^`\n]*)")
# where a command ends: a comment, a redirect, a pipe, a chained command, a line continuation
END_RE = re.compile(r"\s#|\s\d?>|\s\||&&|;|\s\\$")
TEXT_SUFFIXES = {".md", ".yaml", ".yml", ".py", ".smk", ".sh", ".rst", ".cff", ".txt", ""}
CONFIG_FILE_RE = re.compile(r"(\.ya?ml|\.json)$|^\$")


def documented_commands() -> list[tuple[str, str]]:
    """(where, command after `snakemake`) for every command line in the repository's files but the tests."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        path = REPO / name
        if name.startswith("tests/") or path.suffix not in TEXT_SUFFIXES or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for match in COMMAND_RE.finditer(line):
                rest = END_RE.split(match.group("rest"), maxsplit=1)[0]
                if path.suffix in (".py", ".smk"):  # a command in a string ends with the string
                    rest = re.split(r"[\"']", rest, maxsplit=1)[0]
                found.append((f"{name}:{number}", rest.strip()))
    return found


def targets() -> set[str]:
    paper = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return {"all", "claims", *paper["figures"]}


def problems(command: str, options: dict, known_targets: set[str]) -> list[str]:
    """What is wrong with one command line (the words after `snakemake`)."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return [f"cannot be split into words: {exc}"]
    found, option = [], None
    for word in words:
        if word.startswith("-") and not re.fullmatch(r"-\d+", word):
            name = word.split("=", 1)[0]
            action = options.get(name)
            if action is None:
                found.append(f"{name} is not a Snakemake option")
            option = action if action is not None and action.nargs in ("+", "*") and "=" not in word else None
            continue
        if option is None:
            continue
        if "--configfile" in option.option_strings or "--configfiles" in option.option_strings:
            if not CONFIG_FILE_RE.search(word):
                found.append(f"{word!r} after --configfile is read as a config file: put targets first")
        elif "--config" in option.option_strings:
            if "=" not in word:
                found.append(f"{word!r} after --config is read as a KEY=VALUE: put targets first")
        elif word in known_targets:
            found.append(f"target {word!r} after {option.option_strings[-1]} is read as its value: put targets "
                         "first")
    return found


def test_the_check_catches_a_target_after_configfile():
    options = snakemake_cli.get_argument_parser()._option_string_actions
    known = targets()
    assert problems("--cores 2 --configfile config/quick.yaml all", options, known)
    assert problems("fig2 --config data_dir=x fig3", options, known)
    assert problems("--until prepare_data all", options, known)
    assert problems("all --corse 2", options, known) == ["--corse is not a Snakemake option"]
    assert not problems("all --cores 2 --configfile config/quick.yaml", options, known)
    assert not problems('fig2 --configfile "$PRESET" "$BATCH4" -n', options, known)


def test_every_documented_snakemake_command_line_works_as_written():
    commands = documented_commands()
    assert any(where.startswith("README.md") for where, _ in commands)
    assert any(where.startswith("config/quick.yaml") for where, _ in commands)
    options = snakemake_cli.get_argument_parser()._option_string_actions
    known = targets()
    wrong = [f"{where}: snakemake {command}: {problem}" for where, command in commands
             for problem in problems(command, options, known)]
    assert not wrong, "\n".join(wrong)
