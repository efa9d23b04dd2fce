"""The structure: each module imports only from the layers below its own, never back up.

README.md's "Layout" draws the same layers; the drawing is checked against LAYERS here, and every
import in the code against the drawing.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Top to bottom. A unit is a module or a package (its modules may import each other freely).
LAYERS = [
    ("entry points", ["run_gmvae", "run_vae", "course", "writeup", "benchmarks"]),
    ("orchestration", ["codebase.run", "codebase.submit"]),
    ("training and evaluation", ["codebase.evaluate", "codebase.check"]),
    ("data and the loop", ["codebase.data", "codebase.train"]),
    ("models", ["codebase.models"]),
    ("leaves", ["codebase.utils", "codebase.config", "codebase.runtime"]),
]
RANK = {unit: rank for rank, (_, units) in enumerate(reversed(LAYERS)) for unit in units}


def unit_of(module):
    """The unit of LAYERS a dotted module name belongs to, or None outside the project."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANK:
            return ".".join(parts[:n])
    return None


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """Every project module that the file at `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def edges():
    """(importer's unit, imported unit, file) of every import between two different units."""
    files = [p for p in ROOT.rglob("*.py") if not {".venv", "tests", "data"} & set(p.relative_to(ROOT).parts)
             and p != ROOT / "codebase" / "__init__.py"]
    out = set()
    for path in files:
        source = unit_of(module_name(path))
        assert source, f"{path.relative_to(ROOT)} belongs to no layer: add it to LAYERS and the README's drawing"
        for name in imports(path):
            target = unit_of(name)
            if target and target != source:
                out.add((source, target, path.relative_to(ROOT).as_posix()))
    return out


def drawing():
    """The layers as README.md draws them."""
    width = max(len(name) for name, _ in LAYERS)
    lines = [f"{name:<{width}}  {', '.join(units)}" for name, units in LAYERS]
    return "\n".join(f"    {line}" for line in lines) + "\n"


def test_no_import_goes_back_up_or_sideways():
    upward = sorted(f"{file}: {source} imports {target}" for source, target, file in edges()
                    if RANK[target] >= RANK[source])
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_checker_sees_the_imports_it_judges():
    # A checker that found no edge would pass anything.
    found = {(source, target) for source, target, _ in edges()}
    assert {("codebase.run", "codebase.train"), ("codebase.models", "codebase.utils"),
            ("codebase.check", "codebase.runtime"), ("course", "codebase.check")} <= found
    assert unit_of("codebase.runtime.files") == "codebase.runtime" and unit_of("torch") is None


def test_runtime_imports_nothing_outside_itself():
    outside = sorted(f"{file} imports {target}" for source, target, file in edges() if source == "codebase.runtime")
    assert not outside


def test_the_readme_draws_these_layers():
    assert drawing() in (ROOT / "README.md").read_text()
