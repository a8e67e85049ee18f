"""Check what the built wheel and sdist contain: run by scripts/smoke-wheel (standard library only).

usage: check_dist.py SOURCE_TREE WHEEL SDIST

The wheel must hold every file of the import package in the source tree (``py.typed``, the management
command and ``replicarouter/testing`` included) and nothing else but its ``.dist-info``; the sdist must
hold what building, testing and the docs need, and none of the demo, benchmarks, scripts or local venvs.
Prints the wheel's file list; exits 1 naming every problem.
"""

from __future__ import annotations

import configparser
import email.message
import email.parser
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

PACKAGE = "replicarouter"
DIST = "django_replicarouter"
#: named explicitly as well, so a source tree that lost them fails too
WHEEL_REQUIRED = {
    "replicarouter/__init__.py",
    "replicarouter/py.typed",
    "replicarouter/apps.py",
    "replicarouter/router.py",
    "replicarouter/middleware.py",
    "replicarouter/backends/postgresql/base.py",
    "replicarouter/management/__init__.py",
    "replicarouter/management/commands/__init__.py",
    "replicarouter/management/commands/replicastatus.py",
    "replicarouter/testing/__init__.py",
    "replicarouter/testing/__main__.py",
    "replicarouter/testing/plugin.py",
    "replicarouter/testing/local.py",
}
SDIST_REQUIRED = {
    "pyproject.toml",
    "PKG-INFO",
    "README.md",
    "CHANGELOG.md",
    "LICENSE",
    "replicarouter/py.typed",
    "replicarouter/management/commands/replicastatus.py",
    "tests/settings.py",
    "tests/conftest.py",
    "docs/index.md",
}
SDIST_FORBIDDEN_TOP = {"demo", "benchmarks", "scripts", "compose", ".ci", ".git", "site", "dist", "build"}
CLASSIFIERS = {
    "Framework :: Django :: 4.2",
    "Framework :: Django :: 5.2",
    "Framework :: Pytest",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
    "Typing :: Typed",
}


def source_files(root: Path, under: str) -> set[str]:
    """Return the files git tracks under ``under`` (all files when ``root`` is no git checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "--", under], capture_output=True, text=True, check=True
        ).stdout
        files = set(out.split())
    except (OSError, subprocess.CalledProcessError):
        files = {str(p.relative_to(root)) for p in (root / under).rglob("*") if p.is_file()}
    return {f for f in files if not junk(f) and (root / f).is_file()}


def junk(name: str) -> bool:
    return "__pycache__" in name or name.endswith((".pyc", ".pyo", ".orig", ".rej", "~"))


def check_wheel(root: Path, wheel: Path, version: str) -> list[str]:
    problems = []
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"{DIST}-{version}.dist-info"
        metadata = email.parser.Parser().parsestr(zf.read(f"{info}/METADATA").decode())
        entry_points = (
            zf.read(f"{info}/entry_points.txt").decode() if f"{info}/entry_points.txt" in names else ""
        )
    required = WHEEL_REQUIRED | source_files(root, PACKAGE)
    required |= {f"{info}/licenses/LICENSE", f"{info}/METADATA", f"{info}/RECORD", f"{info}/WHEEL"}
    problems += [f"wheel lacks {name}" for name in sorted(required - names)]
    for name in sorted(names):
        if not (name.startswith((f"{PACKAGE}/", f"{info}/"))):
            problems.append(f"wheel holds {name} (only {PACKAGE}/ and {info}/ belong in it)")
        elif junk(name):
            problems.append(f"wheel holds {name}")
    problems += check_metadata(metadata, version)
    parsed = configparser.ConfigParser()
    parsed.read_string(entry_points)
    if parsed.get("pytest11", "replicarouter", fallback=None) != "replicarouter.testing.plugin":
        problems.append(f"wheel lacks the pytest11 entry point: {entry_points!r}")
    modules = sorted(n for n in names if n.startswith(f"{PACKAGE}/"))
    print(f"wheel {wheel.name}: {len(names)} files, {len(modules)} in {PACKAGE}/")
    for name in sorted(names):
        print(f"  {name}")
    return problems


def check_metadata(metadata: email.message.Message, version: str) -> list[str]:
    problems = []
    expected = {
        "Name": "django-replicarouter",
        "Version": version,
        "License-Expression": "BSD-3-Clause",
        "License-File": "LICENSE",
        "Requires-Python": ">=3.11",
        "Description-Content-Type": "text/markdown",
    }
    for field, value in expected.items():
        if metadata.get(field) != value:
            problems.append(f"METADATA {field}: {metadata.get(field)!r}, expected {value!r}")
    classifiers = set(metadata.get_all("Classifier") or [])
    problems += [f"METADATA lacks classifier {c!r}" for c in sorted(CLASSIFIERS - classifiers)]
    problems += [
        f"METADATA has deprecated license classifier {c!r}" for c in classifiers if c.startswith("License ::")
    ]
    urls = {u.split(",", 1)[0] for u in metadata.get_all("Project-URL") or []}
    problems += [
        f"METADATA lacks Project-URL {u}" for u in ("Documentation", "Changelog", "Source") if u not in urls
    ]
    extras = set(metadata.get_all("Provides-Extra") or [])
    problems += [f"METADATA lacks extra {e!r}" for e in ("binary", "prometheus") if e not in extras]
    return problems


def check_sdist(root: Path, sdist: Path, version: str) -> list[str]:
    problems = []
    prefix = f"{DIST}-{version}/"
    with tarfile.open(sdist) as tf:
        members = [m.name for m in tf.getmembers() if m.isfile()]
    outside = [m for m in members if not m.startswith(prefix)]
    problems += [f"sdist member outside {prefix}: {m}" for m in outside]
    names = {m[len(prefix) :] for m in members if m.startswith(prefix)}
    required = SDIST_REQUIRED | source_files(root, PACKAGE) | source_files(root, "tests")
    if (root / "mkdocs.yml").is_file():
        required.add("mkdocs.yml")
    problems += [f"sdist lacks {name}" for name in sorted(required - names)]
    for name in sorted(names):
        top = name.split("/", 1)[0]
        if top in SDIST_FORBIDDEN_TOP or top.startswith(".venv") or junk(name):
            problems.append(f"sdist holds {name}")
    tops = sorted({n.split("/", 1)[0] for n in names})
    print(f"sdist {sdist.name}: {len(names)} files; top level: {', '.join(tops)}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    root, wheel, sdist = Path(argv[0]), Path(argv[1]), Path(argv[2])
    init = (root / PACKAGE / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', init, re.M)
    if match is None:
        print(f"no __version__ in {PACKAGE}/__init__.py", file=sys.stderr)
        return 1
    version = match.group(1)
    problems = check_wheel(root, wheel, version) + check_sdist(root, sdist, version)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if problems:
        return 1
    print("wheel and sdist contents: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
