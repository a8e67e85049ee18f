"""Every benchmarks/results/*.json describes today's code: measured at an ancestor of HEAD, nothing since.

Each results file opens with a ``measured`` block (benchmarks/common.py writes it): the commit, the date,
and the git pathspecs of the code it measures. A result is current when its commit is an ancestor of HEAD
(``git merge-base --is-ancestor``), no later commit touched the measured paths (``git log C..HEAD --
PATHS`` is empty) and it was not measured on a dirty tree. After a change to measured code, rerun the
benchmark (``scripts/run-benchmarks`` reruns all of them). Without a git checkout (an sdist) the check is
skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
COMMON = ROOT / "benchmarks" / "common.py"
RESULTS = ROOT / "benchmarks" / "results"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true: failing instead of skipping: {reason}")
    pytest.skip(reason)


def load_common() -> ModuleType:
    """Import benchmarks/common.py by path (benchmarks/ is not a package users install)."""
    if not COMMON.is_file():
        skip_or_fail("benchmarks/ is not in this source tree (an sdist)")
    return load_script(COMMON, "replicarouter_bench_common")


@pytest.fixture(scope="module")
def common() -> ModuleType:
    module = load_common()
    if not module.is_checkout(ROOT):
        skip_or_fail(f"{ROOT} is not a git checkout: cannot tell which commit the results describe")
    return module


RESULT_FILES = sorted(RESULTS.glob("*.json"))


def test_there_are_results_to_check(common: ModuleType) -> None:
    assert RESULT_FILES, f"no results in {RESULTS}: the test below would check nothing"


@pytest.mark.parametrize("path", RESULT_FILES, ids=[p.stem for p in RESULT_FILES])
def test_result_was_measured_on_the_code_at_head(common: ModuleType, path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    reasons = common.stale_reasons(data, ROOT)
    assert not reasons, f"{path.name}: {'; '.join(reasons)}: rerun it (scripts/run-benchmarks)"
    measured = data["measured"]
    assert measured["date"], f"{path.name}: no date"
    assert path.stem in measured["command"], f"{path.name}: command {measured['command']!r} is another script"


# --- the checker itself, on a throw-away repository ------------------------------------------------------


def run_git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


def commit_file(repo: Path, rel: str, text: str) -> str:
    (repo / rel).parent.mkdir(parents=True, exist_ok=True)
    (repo / rel).write_text(text, encoding="utf-8")
    run_git(repo, "add", rel)
    run_git(repo, "commit", "-q", "-m", f"change {rel}")
    return run_git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path, common: ModuleType) -> Path:
    run_git(tmp_path, "init", "-q", "-b", "main")
    commit_file(tmp_path, "lib/core.py", "v1\n")
    commit_file(tmp_path, "lib/testing/cluster.py", "v1\n")
    return tmp_path


MEASURES = ["lib", ":(exclude)lib/testing"]


def result(commit: str, **extra: object) -> dict[str, object]:
    return {
        "measured": {"commit": commit, "date": "2026-01-01T00:00:00+00:00", "measures": MEASURES, **extra}
    }


def test_a_result_at_head_is_current(common: ModuleType, repo: Path) -> None:
    assert common.stale_reasons(result(run_git(repo, "rev-parse", "HEAD")), repo) == []


def test_a_later_change_to_unmeasured_code_keeps_it_current(common: ModuleType, repo: Path) -> None:
    measured_at = run_git(repo, "rev-parse", "HEAD")
    commit_file(repo, "lib/testing/cluster.py", "v2\n")  # excluded from MEASURES
    commit_file(repo, "README", "docs\n")
    assert common.stale_reasons(result(measured_at), repo) == []


def test_a_later_change_to_measured_code_makes_it_stale(common: ModuleType, repo: Path) -> None:
    measured_at = run_git(repo, "rev-parse", "HEAD")
    commit_file(repo, "lib/core.py", "v2\n")
    [reason] = common.stale_reasons(result(measured_at), repo)
    assert "1 later commit(s) changed the measured code" in reason
    assert "change lib/core.py" in reason


def test_a_commit_that_is_not_an_ancestor_is_stale(common: ModuleType, repo: Path) -> None:
    run_git(repo, "checkout", "-q", "-b", "side")
    elsewhere = commit_file(repo, "README", "side branch\n")
    run_git(repo, "checkout", "-q", "main")
    assert common.stale_reasons(result(elsewhere), repo) == [
        f"commit {elsewhere[:10]} is not an ancestor of HEAD"
    ]


def test_an_unknown_commit_is_stale(common: ModuleType, repo: Path) -> None:
    assert common.stale_reasons(result("0" * 40), repo) == ["commit 0000000000 is not in this repository"]


def test_a_dirty_or_unlabelled_result_is_stale(common: ModuleType, repo: Path) -> None:
    head = run_git(repo, "rev-parse", "HEAD")
    [reason] = common.stale_reasons(result(head, dirty=True), repo)
    assert "dirty: true" in reason
    assert common.stale_reasons({"results": {}}, repo) == [
        "records no commit and measured paths (no 'measured' block)"
    ]


def test_measuring_a_dirty_tree_is_refused(common: ModuleType, repo: Path, monkeypatch) -> None:
    monkeypatch.setattr(common, "ROOT", repo)
    monkeypatch.setattr(sys, "argv", ["benchmarks/x_bench.py"])
    monkeypatch.delenv(common.DIRTY_ENV, raising=False)
    assert common.start_measuring("x_bench", MEASURES)["dirty"] is False
    (repo / "lib" / "core.py").write_text("edited\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"uncommitted changes in measured code \(lib/core.py\)"):
        common.start_measuring("x_bench", MEASURES)
    monkeypatch.setenv(common.DIRTY_ENV, "1")
    assert common.start_measuring("x_bench", MEASURES)["dirty"] is True


def test_without_a_checkout_ci_fails_instead_of_skipping(monkeypatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no git here"):
        skip_or_fail("no git here")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(BaseException, match="CI=true: failing instead of skipping: no git here") as outcome:
        skip_or_fail("no git here")
    assert outcome.type is pytest.fail.Exception  # not a skip


def test_the_docs_check_warns_about_a_stale_result(common: ModuleType, repo: Path) -> None:
    render = load_script(ROOT / "benchmarks" / "render.py", "replicarouter_bench_render")
    measured_at = run_git(repo, "rev-parse", "HEAD")
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "results" / "x_bench.json").write_text(json.dumps(result(measured_at)))
    assert render.stale_results(repo) == []
    commit_file(repo, "lib/core.py", "v2\n")
    [warning] = render.stale_results(repo)
    assert warning.startswith("benchmarks/results/x_bench.json: 1 later commit(s) changed the measured code")
