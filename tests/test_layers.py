"""The package's import graph: layers import only layers below them, and nothing imports the CLI.

Layers, bottom up: the package root (its version), errors, numeric, boxes, chain; world; policy and rewards; eval and train; demo;
cli. The ``commands`` module of each package (its CLI handlers) is left out of the layer rule.
Imports inside functions count as much as those at the top of a module. The `gotr1` command starts
light: importing the CLI loads none of torch, transformers or numpy, and building its parser (what
`gotr1 --help` does) loads neither torch nor transformers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "gotr1"
LAYERS = {
    "gotr1": 0, "errors": 0, "numeric": 0, "boxes": 0, "chain": 0,
    "world": 1,
    "policy": 2, "rewards": 2,
    "eval": 3, "train": 3,
    "demo": 4,
    "cli": 5, "__main__": 6,
}  # fmt: skip


def gotr1_imports() -> list[tuple[str, str]]:
    """(importing module, imported module) for every gotr1 import in the package's source."""
    found = []
    for path in SRC.rglob("*.py"):
        module = ".".join(("gotr1", *path.relative_to(SRC).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from gotr1.pkg import submodule` imports the submodule, not just the package
                names = [
                    f"{node.module}.{alias.name}"
                    if module_path(f"{node.module}.{alias.name}").exists()
                    else node.module
                    for alias in node.names
                ]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [(module, name) for name in names if name.split(".")[0] == "gotr1"]
    return found


def module_path(module: str) -> Path:
    """The source file of a gotr1 module name (a package's __init__.py for a package)."""
    path = SRC.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else parts[0]]


def test_every_package_has_a_layer():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
    assert packages | modules <= set(LAYERS)


def test_only_the_entry_point_imports_the_cli():
    importers = {source for source, target in gotr1_imports() if target == "gotr1.cli"}
    assert importers == {"gotr1.__main__"}


def test_no_layer_imports_one_above_it():
    upward = [
        (source, target)
        for source, target in gotr1_imports()
        if not source.endswith(".commands") and layer(target) > layer(source)
    ]
    assert upward == []


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    for source, target in gotr1_imports():
        graph.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo += graph.get(node, ())
        return False

    cycles = sorted(
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if target != source and reaches(target, source)
    )
    assert cycles == []


def modules_loaded_by(code: str, names: tuple[str, ...]) -> list[str]:
    """Which of `names` are in sys.modules after running `code` in a fresh interpreter."""
    script = f"import sys\n{code}\nprint(' '.join(n for n in {names!r} if n in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.split()


def test_importing_the_cli_loads_no_heavy_library():
    assert modules_loaded_by("import gotr1.cli", ("torch", "transformers", "numpy")) == []


def test_building_the_cli_parser_loads_neither_torch_nor_transformers():
    code = "import gotr1.cli\ngotr1.cli.build_parser()"
    assert modules_loaded_by(code, ("torch", "transformers")) == []
