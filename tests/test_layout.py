"""The package's shape: imports run one way, ``torch.distributed`` stays in one package, the
method knows nothing of the command line, and no module grows past a screenful of concerns.

Imports are read from the source (``ast``), function-level and ``if TYPE_CHECKING:`` ones
included: a late import that avoids a cycle at import time, or an annotation that names a
module above, is still a dependency in the design. Importing ``a.b.c`` runs ``a.b``'s
``__init__``, so it counts as importing ``a.b`` too.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "simclr_cli"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from simclr_cli import x`` counts as ``x``), and
    the packages whose ``__init__`` those imports run (but the module's own packages: they are
    loaded before it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    parents = {name.rsplit(".", i)[0] for name in found for i in range(1, name.count("."))}
    me = module_name(path)
    own = {me.rsplit(".", i)[0] for i in range(me.count(".") + 1)}
    return {name for name in (found | parents) - own if name in known and name != "simclr_cli"}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(path, known) - {name} for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_only_the_distributed_package_imports_torch_distributed() -> None:
    outside = []
    for name, path in modules().items():
        if name == "simclr_cli.distributed" or name.startswith("simclr_cli.distributed."):
            continue
        source = path.read_text(encoding="utf-8")
        if "torch.distributed" in source.replace("torch.distributed`", ""):
            tree = ast.parse(source)
            for node in ast.walk(tree):
                names = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                )  # fmt: skip
                if any(n.startswith("torch.distributed") for n in names):
                    outside.append(name)
    assert outside == []


def test_no_module_is_over_about_500_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


# The method (paper) layer: plain arguments in, tensors out.
METHOD_MUST_NOT_IMPORT = ("config", "cli", "storage", "training", "evaluation", "report")


def test_the_method_imports_nothing_of_the_command_line_or_the_layers_above() -> None:
    edges = graph()
    bad = {
        name: sorted(dep for dep in deps if dep.split(".")[1] in METHOD_MUST_NOT_IMPORT)
        for name, deps in edges.items()
        if name.startswith("simclr_cli.method")
    }
    assert {name: deps for name, deps in bad.items() if deps} == {}


def test_the_config_reads_only_leaf_modules_of_facts() -> None:
    # Validation and defaults read facts and pure rules that import nothing of the package
    # above them; everything the config imports (outside config/) may import only those.
    edges = graph()
    outside = {
        dep for name, deps in edges.items() if name.startswith("simclr_cli.config") for dep in deps
    } - {name for name in edges if name.startswith("simclr_cli.config")}
    leaves = {"simclr_cli.errors", *outside}
    assert {dep: sorted(edges[dep] - leaves) for dep in outside if edges[dep] - leaves} == {}


def run_python(code: str) -> str:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout.strip()


def test_the_command_line_starts_without_torch() -> None:
    # `simclr --help` imports the CLI and every config model: none of them may load torch
    loaded = run_python(
        "import sys, simclr_cli.cli; print(sorted(m for m in ('torch', 'torchvision', "
        "'torch.distributed') if m in sys.modules))"
    )
    assert loaded == "[]"


def test_the_method_is_a_library_without_pydantic() -> None:
    loaded = run_python(
        "import sys; from simclr_cli.method import SimCLR, nt_xent, LARS, SimCLRAugment; "
        "print(SimCLR.__name__, nt_xent.__name__, LARS.__name__, 'pydantic' in sys.modules)"
    )
    assert loaded == "SimCLR nt_xent LARS False"
