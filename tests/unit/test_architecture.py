"""The package's shape, as docs/architecture.md records it: module tables that match the tree, small modules,
top-level modules that are process-wide or contract import paths, and pure modules that stay pure.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "replicarouter"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

MAX_LINES = 350
#: top-level modules: process-wide concerns, and the import paths the public contract fixes
TOP_LEVEL = {
    "__init__.py",
    "apps.py",
    "checks.py",
    "conf.py",
    "exceptions.py",
    "redis_client.py",
    "runtime.py",
    "settings_schema.py",
}
ALIASES = {"router.py", "middleware.py", "metrics.py", "logs.py"}
#: modules that decide without I/O (STYLE.md 1): unit-tested and mutation-tested without servers
PURE = [
    "backends/postgresql/holding.py",
    "routing/selection.py",
    "routing/statements.py",
    "routing/topology.py",
    "sticky/policy.py",
    "pool/reset.py",
    "settings_schema.py",
    "health/rules.py",
    "health/lag.py",
    "health/election.py",
    "health/schema.py",
    "observability/fleet_records.py",
]
IMPURE_IMPORTS = ("django", "redis", "sqlalchemy", "psycopg2", "psycopg", "replicarouter.conf")
#: computation without I/O that a pure module may use: Django's signing (the position cookie)
PURE_IMPORTS = {"django.core", "django.core.signing"}
#: private-looking names that are Django's documented model API
DJANGO_MODEL_API = {"_meta", "_state"}


def _modules(under: Path) -> set[str]:
    found = set()
    for path in under.rglob("*.py"):
        relative = path.relative_to(under).as_posix()
        body = ast.parse(path.read_text()).body
        if (
            path.name == "__init__.py"
            and relative != "__init__.py"
            and all(isinstance(n, ast.Expr) for n in body)
        ):
            continue  # a package marker (empty, or its docstring only) is not a module of its own
        found.add(relative)
    return found


def _table(heading: str) -> set[str]:
    """Return the module paths in the first column of the table in the section titled with ``heading``."""
    text = ARCHITECTURE.read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    section = next(s for s in sections if heading in s.splitlines()[0])
    return set(re.findall(r"^\| `([^`]+\.py)` \|", section, flags=re.M))


def test_the_runtime_module_table_matches_the_tree():
    tree = {m for m in _modules(PACKAGE) if not m.startswith("testing/")}
    documented = _table("Runtime package")
    assert sorted(tree - documented) == [], "modules missing from docs/architecture.md"
    assert sorted(documented - tree) == [], "docs/architecture.md lists modules that do not exist"


def test_the_harness_module_table_matches_the_tree():
    tree = _modules(PACKAGE / "testing") - {"__init__.py", "__main__.py"}
    documented = _table("Test harness")
    assert sorted(tree - documented) == [], "harness modules missing from docs/architecture.md"
    assert sorted(documented - tree) == [], "docs/architecture.md lists harness modules that do not exist"


@pytest.mark.parametrize("module", sorted(_modules(PACKAGE)))
def test_no_module_is_over_the_size_limit(module):
    lines = len((PACKAGE / module).read_text().splitlines())
    assert lines <= MAX_LINES, f"replicarouter/{module} has {lines} lines (limit {MAX_LINES}): split it"


def test_top_level_modules_are_process_wide_or_contract_import_paths():
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top - TOP_LEVEL - ALIASES == set(), "a top-level module that belongs to a concept package"


@pytest.mark.parametrize("module", sorted(ALIASES))
def test_contract_import_paths_only_re_export(module):
    tree = ast.parse((PACKAGE / module).read_text())
    body = tree.body[1:] if isinstance(tree.body[0], ast.Expr) else tree.body  # the docstring
    for node in body:
        is_all = isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["__all__"]
        assert isinstance(node, ast.ImportFrom) or is_all, (
            f"{module} does more than re-export: {ast.dump(node)}"
        )


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module):
    tree = ast.parse((PACKAGE / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
    impure = sorted(m for m in imported - PURE_IMPORTS if m.split(".")[0] in IMPURE_IMPORTS)
    assert impure == [], f"{module} imports {impure}"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_reaches_into_another_objects_private_names():
    """``x._name`` on anything but ``self``, ``cls`` or ``super()``, and ``_name`` imported from our modules.

    Django's documented model API (``_meta``, ``_state``) is the one exception.
    """
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("replicarouter")
            ):
                offenders += [f"{where}: imports {a.name}" for a in node.names if _private(a.name)]
            if (
                not isinstance(node, ast.Attribute)
                or not node.attr.startswith("_")
                or node.attr.startswith("__")
            ):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue  # overriding Django's hooks (``super()._close()``)
            if node.attr in DJANGO_MODEL_API:
                continue
            offenders.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []
