"""Score a mutmut run of the decision modules (scripts/mutation runs it; see docs/mutation.md).

Reads the scope, the threshold and the accepted survivors from ``[tool.replicarouter.mutation]`` in
pyproject.toml, and mutmut's verdicts from ``mutmut results --all true`` (a file, or ``-`` for stdin).

The score is killed / (in scope - accepted survivors). A mutant is killed when a unit test failed
(``killed``) or hung or crashed (``timeout``, ``segfault``). Every other verdict counts against the score:
``survived``, ``no tests`` (no unit test even calls the function), ``suspicious``. An accepted survivor
that no longer survives, or no longer exists (mutmut numbers a function's mutants in order, so editing
it renumbers them), is reported as stale so that the list stays true.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DETECTED = frozenset({"killed", "timeout", "segfault"})
_RESULT = re.compile(r"^\s*(\S+): (.+?)\s*$")


@dataclass(frozen=True)
class Settings:
    scope: tuple[str, ...]
    threshold: float
    survivors: Path


def settings(pyproject: Path = ROOT / "pyproject.toml") -> Settings:
    """Return the mutation step's settings from pyproject.toml."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["replicarouter"]["mutation"]
    return Settings(tuple(data["scope"]), float(data["threshold"]), ROOT / data["survivors"])


def accepted(path: Path) -> dict[str, str]:
    """Return the accepted survivors: mutant id -> the reason it may live (one ``id  # reason`` a line)."""
    found: dict[str, str] = {}
    if not path.exists():
        return found
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        mutant, _, reason = line.partition("#")
        mutant, reason = mutant.strip(), reason.strip()
        if not reason:
            raise SystemExit(f"{path.name}:{number}: {mutant} has no reason (write 'id  # why it may live')")
        found[mutant] = reason
    return found


def verdicts(text: str) -> dict[str, str]:
    """Return mutant id -> verdict from the output of ``mutmut results --all true``."""
    found = {}
    for line in text.splitlines():
        match = _RESULT.match(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def in_scope(mutant: str, scope: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(mutant, pattern) for pattern in scope)


def _functions(path: Path) -> dict[str, str]:
    """Return the source of every function (methods included) in one of mutmut's mutated files, by name."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    return {
        # the body only: the def line differs by name alone
        node.name: "\n".join(lines[node.lineno : node.end_lineno])
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def diff(mutant: str, cache: dict[Path, dict[str, str]]) -> str:
    """Return the lines one mutant changes (its function in mutants/ against the original copy there)."""
    module, _, name = mutant.rpartition(".")
    path = ROOT / "mutants" / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = path.with_suffix("") / "__init__.py"
    if path not in cache:
        cache[path] = _functions(path) if path.exists() else {}
    functions = cache[path]
    original = functions.get(name.rpartition("__mutmut_")[0] + "__mutmut_orig")
    changed = functions.get(name)
    if original is None or changed is None:
        return "(source not found in mutants/)"
    lines = difflib.unified_diff(original.splitlines(), changed.splitlines(), lineterm="", n=0)
    return "\n".join(
        line for line in lines if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", help="output of `mutmut results --all true` ('-': stdin)")
    parser.add_argument("--scope", action="store_true", help="print the scope patterns (for mutmut run)")
    parser.add_argument(
        "--list-survivors",
        action="store_true",
        help="print the survivors not yet accepted, with their diffs, in the survivors file's format",
    )
    args = parser.parse_args(argv)
    config = settings()
    if args.scope:
        print("\n".join(config.scope))
        return 0
    if args.results is None:
        parser.error("give the results file (or --scope)")
    text = sys.stdin.read() if args.results == "-" else Path(args.results).read_text(encoding="utf-8")
    everything = verdicts(text)
    found = {m: v for m, v in everything.items() if in_scope(m, config.scope)}
    allowed = accepted(config.survivors)
    if not found:
        print("mutation: no mutant in scope: did mutmut run?", file=sys.stderr)
        return 2

    killed = sorted(m for m, v in found.items() if v in DETECTED)
    living = sorted(m for m, v in found.items() if v not in DETECTED)
    excused = [m for m in living if m in allowed]
    unexcused = [m for m in living if m not in allowed]
    stale = sorted(m for m in allowed if found.get(m) in DETECTED or m not in found)
    unchecked = [m for m in living if found[m] == "not checked"]

    if args.list_survivors:
        cache: dict[Path, dict[str, str]] = {}
        for mutant in unexcused:
            print(f"{mutant}  # {found[mutant]}: TODO say why it may live, or kill it")
            for line in diff(mutant, cache).splitlines():
                print(f"#   {line}")
        return 0

    counted = len(found) - len(excused)
    score = 100.0 * len(killed) / counted if counted else 100.0
    by_verdict: dict[str, int] = {}
    for verdict in found.values():
        by_verdict[verdict] = by_verdict.get(verdict, 0) + 1
    print(
        f"mutation: {len(found)} mutants in scope ("
        + ", ".join(f"{n} {v}" for v, n in sorted(by_verdict.items()))
        + f"); {len(excused)} accepted survivors"
    )
    print(f"mutation: score {len(killed)}/{counted} = {score:.1f} % (threshold {config.threshold:g} %)")
    for mutant in unexcused:
        print(f"mutation: not killed, not accepted: {mutant} ({found[mutant]})")
    for mutant in stale:
        state = found.get(mutant, "no such mutant")
        print(f"mutation: stale entry in {config.survivors.name}: {mutant} ({state}): remove it")
    if unchecked:
        print(f"mutation: {len(unchecked)} mutants were not checked (run interrupted?)", file=sys.stderr)
        return 1
    return 0 if score >= config.threshold else 1


if __name__ == "__main__":
    sys.exit(main())
