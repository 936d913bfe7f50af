"""The repository's promises: the README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def _run_quickstart_install(tmp_path: Path, nvidia_smi: int | None) -> list[str]:
    """The quickstart's first line, run by bash with stand-ins for python3.11, pip, simclr and
    (when ``nvidia_smi`` is an exit status) nvidia-smi; returns the commands they were given.
    Nothing else is on PATH, so a real nvidia-smi of the machine cannot answer."""
    import subprocess

    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    stubs = {
        "python3.11": "/bin/mkdir -p .venv/bin && : > .venv/bin/activate",
        "pip": f'echo "pip $*" >> {log}',
        "simclr": f'echo "simclr $1" >> {log}',
    }
    if nvidia_smi is not None:
        stubs["nvidia-smi"] = f'echo "nvidia-smi $*" >> {log}; exit {nvidia_smi}'
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(
        ["/bin/bash", "-c", _quickstart_commands()[0]],
        cwd=work, env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, check=True, timeout=600,
    )  # fmt: skip
    return log.read_text().splitlines()


CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize(("nvidia_smi", "cpu_build"), [(None, True), (9, True), (0, False)])
def test_the_quickstart_installs_the_cpu_build_where_there_is_no_nvidia_driver(
    tmp_path: Path, nvidia_smi: int | None, cpu_build: bool
) -> None:
    # No nvidia-smi, or one that fails (no driver): PyTorch's CPU build first, then the package,
    # which keeps it. A working nvidia-smi: the package alone, with pip's default (CUDA) build.
    calls = [c for c in _run_quickstart_install(tmp_path, nvidia_smi) if not c.startswith("nv")]
    pins = _quickstart_commands()[0].split("pip install ", 1)[1].split(" --index-url")[0]
    expected = [f"pip install {pins} {CPU_INDEX}"] if cpu_build else []
    assert calls == [*expected, "pip install .", "simclr pretrain", "simclr linear-eval"]


def test_the_quickstart_cpu_build_is_the_version_ci_installs_and_the_package_keeps() -> None:
    from packaging.requirements import Requirement

    line = _quickstart_commands()[0]
    assert CPU_INDEX in line
    pins = line.split("pip install ", 1)[1].split(" --index-url")[0].split()
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"pip install {' '.join(pins)}\n" in ci  # the versions CI tests
    project = (ROOT / "pyproject.toml").read_text()
    declared = {
        Requirement(r).name: Requirement(r).specifier
        for r in re.findall(r'"((?:torch|torchvision)[<>=!,.\d]+)"', project)
    }
    for pin in pins:  # `pip install .` finds them installed and within range: it keeps them
        name, version = pin.split("==")
        assert version in declared[name], (pin, declared[name])


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
