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


def test_gpu_check_script_parses_and_runs_only_checks_it_defines() -> None:
    """benchmarks/gpu_check.sh must run unchanged on a GPU machine nobody here can reach."""
    import subprocess

    script = ROOT / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    body = text.split("<<'PYEOF'\n", 1)[1].split("\nPYEOF\n", 1)[0]
    compile(body, "gpu_check.py", "exec")
    called = re.findall(r"^  check (\S+) \d+$", text, re.M)
    table = re.search(r"CHECKS = \{(.*?)\n\}", body, re.S)
    assert called and table, "the script calls checks from its CHECKS table"
    assert [n for n in called if f'"{n}":' not in table.group(1)] == []
    for name in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection"):
        assert name in text.split("set -uo pipefail", 1)[0], f"the header explains {name}"


def test_the_readme_python_api_example_runs_without_pydantic() -> None:
    # The README's example is the method as a library: it runs as written, in a fresh
    # interpreter, and never loads the command line's pydantic models.
    import subprocess
    import sys

    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, "the Python API section has an example"
    code = block.group(1) + (
        "\nimport math, sys\noptimizer.zero_grad(); loss.backward(); optimizer.step()"
        "\nprint(tuple(h.shape), tuple(z.shape), math.isfinite(loss.item()),"
        " 'pydantic' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.split() == ["(16,", "512)", "(16,", "128)", "True", "False"]
