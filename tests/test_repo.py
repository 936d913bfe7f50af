"""The repository's promises: the README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh|console)?\n(.*?)```", section, re.S)
    assert block, "the Quickstart has a code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_two_command_quickstart() -> None:
    readme = (ROOT / "README.md").read_text()
    first_heading = re.findall(r"^## .*$", readme, re.M)[0]
    assert first_heading == "## Quickstart"
    commands = _quickstart_commands()
    assert len(commands) == 2
    assert "simclr pretrain" in commands[0] and "--dataset shapes" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _quickstart_commands()[1] in ci


def test_readme_documents_every_pretrain_flag() -> None:
    """Every pretrain option appears in the README, so the docs match the code."""
    from simclr_cli.config import PretrainConfig, flag_name

    readme = (ROOT / "README.md").read_text()
    missing = [
        flag_name(name) for name in PretrainConfig.model_fields if flag_name(name) not in readme
    ]
    assert not missing, f"README does not mention {missing}"


def test_changelog_follows_keep_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog")
    assert "## [Unreleased]" in text
    assert "keepachangelog.com" in text
