"""scripts/django-conformance's decisions: the expected list, unittest's report, the verdict, the settings.

The run itself (a cluster, Django's suite) is scripts/django-conformance's job; these tests need no server.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "django_conformance.py"
RUNNER = ROOT / "scripts" / "django_conformance_runner.py"
# the sdist ships tests/ but not scripts/
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="scripts/ is not in this source tree")


@pytest.fixture(scope="module")
def conformance() -> ModuleType:
    return load_script(SCRIPT, "replicarouter_django_conformance")


REPORT = """\
Found 5 test(s).
.F.E
======================================================================
ERROR: test_boom (app.tests.Things.test_boom)
A docstring's first line.
----------------------------------------------------------------------
Traceback (most recent call last):
  File "x.py", line 1, in test_boom
RuntimeError: boom

======================================================================
FAIL: test_values (app.tests.Things.test_values) (value=2)
----------------------------------------------------------------------
AssertionError: 2 != 3

======================================================================
FAIL: test_values (app.tests.Things.test_values) [other]
----------------------------------------------------------------------
AssertionError: 4 != 5

======================================================================
ERROR: setUpClass (other.tests.Setup)
----------------------------------------------------------------------
OperationalError: no

======================================================================
UNEXPECTED SUCCESS: test_lucky (app.tests.Things.test_lucky)
----------------------------------------------------------------------
Ran 5 tests in 0.217s

FAILED (failures=2, errors=2, unexpected successes=1)
"""


def test_the_report_gives_every_failing_test_once_with_its_traceback(conformance: ModuleType) -> None:
    outcome = conformance.parse_output(REPORT)
    assert sorted(outcome.failing) == [
        "app.tests.Things.test_boom",
        "app.tests.Things.test_lucky",
        "app.tests.Things.test_values",
        "other.tests.Setup.setUpClass",
    ]
    assert outcome.ran == 5 and outcome.seconds == pytest.approx(0.217)
    boom = outcome.failing["app.tests.Things.test_boom"]
    assert boom[0] == "ERROR: test_boom (app.tests.Things.test_boom)" and boom[-2] == "RuntimeError: boom"
    # both subtests under their test, each with its own header
    values = outcome.failing["app.tests.Things.test_values"]
    assert [line for line in values if line.startswith("FAIL:")] == [
        "FAIL: test_values (app.tests.Things.test_values) (value=2)",
        "FAIL: test_values (app.tests.Things.test_values) [other]",
    ]
    # unittest's summary belongs to no test
    lucky = outcome.failing["app.tests.Things.test_lucky"]
    assert lucky == ["UNEXPECTED SUCCESS: test_lucky (app.tests.Things.test_lucky)"]


def test_a_run_that_crashed_has_no_count(conformance: ModuleType) -> None:
    assert conformance.parse_output("Found 5 test(s).\n..Traceback (most recent call last):\n").ran is None
    assert conformance.parse_output(REPORT.replace("Ran 5 tests", "Ran 5 testz")).ran is None


def test_the_expected_list_needs_a_reason_on_every_line(conformance: ModuleType) -> None:
    text = "# a comment\n\napp.tests.A.test_a  # why it fails\n  app.tests.B.test_b#terse\n"
    assert conformance.parse_expected(text) == {
        "app.tests.A.test_a": "why it fails",
        "app.tests.B.test_b": "terse",
    }
    with pytest.raises(ValueError, match=r"x.txt:2: app.tests.C.test_c has no reason"):
        conformance.parse_expected("app.tests.A.test_a  # why\napp.tests.C.test_c  #  \n", "x.txt")
    with pytest.raises(ValueError, match="no reason"):
        conformance.parse_expected("app.tests.C.test_c\n")
    with pytest.raises(ValueError, match="listed twice"):
        conformance.parse_expected("a.b  # one\na.b  # two\n")
    with pytest.raises(ValueError, match="not one test id"):
        conformance.parse_expected("a.b c.d  # two ids\n")


def test_the_committed_expected_list_parses(conformance: ModuleType) -> None:
    expected = conformance.parse_expected(conformance.EXPECTED.read_text(encoding="utf-8"))
    apps = tuple(conformance.APPS)
    assert all(test.startswith(tuple(f"{app}." for app in apps)) for test in expected), expected


def test_new_failures_and_entries_that_pass_both_fail_the_check(conformance: ModuleType) -> None:
    expected = {"app.t.A.test_known": "why", "app.t.A.test_fixed": "why"}
    verdict = conformance.judge(
        ["app.t.A.test_known", "app.t.A.test_new"], expected, ["app"], "replicarouter"
    )
    assert (verdict.new, verdict.fixed, verdict.expected) == (
        ["app.t.A.test_new"],
        ["app.t.A.test_fixed"],
        ["app.t.A.test_known"],
    )
    assert not verdict.ok
    assert conformance.judge(
        ["app.t.A.test_known"], {"app.t.A.test_known": "why"}, ["app"], "replicarouter"
    ).ok


def test_only_the_entries_of_the_labels_that_ran_are_judged(conformance: ModuleType) -> None:
    expected = {"app.t.A.test_a": "why", "application.t.B.test_b": "why"}
    # 'app' is no prefix of 'application'
    assert conformance.judge(["app.t.A.test_a"], expected, ["app"], "replicarouter").ok
    assert conformance.judge([], expected, ["app.t.A.test_other"], "replicarouter").ok
    verdict = conformance.judge([], expected, ["application", "app.t.A.test_a"], "replicarouter")
    assert verdict.fixed == ["app.t.A.test_a", "application.t.B.test_b"]


def test_with_djangos_engine_only_environment_differences_are_expected(conformance: ModuleType) -> None:
    too = f"{conformance.DJANGO_TOO}: no hstore"
    expected = {"app.t.A.test_env": too, "app.t.A.test_ours": "only with replicarouter's ENGINE: pooled"}
    assert conformance.judge(["app.t.A.test_env"], expected, ["app"], "django").ok
    verdict = conformance.judge(["app.t.A.test_ours"], expected, ["app"], "django")
    assert (verdict.new, verdict.fixed) == (["app.t.A.test_ours"], ["app.t.A.test_env"])


def test_pool_options_come_from_the_environment_then_the_command_line(conformance: ModuleType) -> None:
    pool = conformance.pool_options(
        '{"RELEASE": "request", "SIZE": 4}', ["RELEASE=transaction", "PRE_PING=true"]
    )
    assert pool == {"RELEASE": "transaction", "SIZE": 4, "PRE_PING": True}
    assert conformance.pool_options(None, []) == {}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        conformance.pool_options(None, ["SIZE"])
    with pytest.raises(ValueError, match="JSON object"):
        conformance.pool_options("[1]", [])


def settings_of(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(source, "conformance_settings.py", "exec"), namespace)
    return namespace


PRIMARY = {"ENGINE": "x", "NAME": "replicarouter", "HOST": "127.0.0.1", "PORT": "5999", "USER": "postgres"}


def test_the_settings_module_has_both_aliases_on_the_primary(conformance: ModuleType) -> None:
    values = settings_of(
        conformance.settings_module({**PRIMARY, "PASSWORD": "pw"}, "replicarouter", {"SIZE": 3})
    )
    databases = values["DATABASES"]
    assert sorted(databases) == ["default", "other"]
    assert databases["default"]["NAME"] != databases["other"]["NAME"]
    for entry in databases.values():
        assert entry["ENGINE"] == "replicarouter.backends.postgresql"
        assert (entry["HOST"], entry["PORT"], entry["USER"], entry["PASSWORD"]) == (
            "127.0.0.1",
            "5999",
            "postgres",
            "pw",
        )
        assert entry["POOL"] == {"SIZE": 3}
    # each alias its own cluster: 'other' is no replica of 'default'
    assert values["REPLICAROUTER"] == {
        "CLUSTERS": {"default": {"PRIMARY": "default"}, "other": {"PRIMARY": "other"}}
    }
    assert values["TEST_RUNNER"] == "django_conformance_runner.ConformanceRunner"
    assert "DATABASE_ROUTERS" not in values and values["DEFAULT_AUTO_FIELD"] == "django.db.models.AutoField"


def test_djangos_engine_gets_no_pool_and_no_replicarouter_settings(conformance: ModuleType) -> None:
    values = settings_of(conformance.settings_module({**PRIMARY, "PASSWORD": ""}, "django", {}))
    assert {entry["ENGINE"] for entry in values["DATABASES"].values()} == {"django.db.backends.postgresql"}
    assert all("POOL" not in entry for entry in values["DATABASES"].values())
    assert "REPLICAROUTER" not in values


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle this")


def test_the_runner_turns_an_unpicklable_exception_into_text(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = load_script(RUNNER, "django_conformance_runner")
    monkeypatch.setitem(sys.modules, "django_conformance_runner", runner)  # as in a run: importable
    try:
        raise Unpicklable("deep inside")
    except Unpicklable:
        err = sys.exc_info()
    kind, value, traceback = runner.picklable(err)
    assert kind is runner.UnpicklableError and traceback is None
    assert "Unpicklable, which could not be pickled (TypeError('cannot pickle this'))" in str(value)
    assert "test_the_runner_turns_an_unpicklable_exception_into_text" in str(value)  # the traceback, as text
    assert "Unpicklable: deep inside" in str(value)
    assert str(pickle.loads(pickle.dumps(value))) == str(value)
    # what pickles stays as it is (tracebacks pickle with tblib, which Django installs in each worker)
    plain = (ValueError, ValueError("plain"), None)
    assert runner.picklable(plain) is plain


def test_a_long_traceback_keeps_its_start_and_its_end() -> None:
    runner = load_script(RUNNER, "django_conformance_runner")
    try:
        raise Unpicklable("\n".join(f"detail {n}" for n in range(100)))
    except Unpicklable:
        err = sys.exc_info()
    lines = str(runner.picklable(err)[1]).splitlines()
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "detail 99"
    # the traceback has 3 lines before the message's 100
    assert lines[1 + runner.HEAD] == f"    ... {103 - runner.HEAD - runner.TAIL} lines left out ..."
    assert len(lines) == 1 + runner.HEAD + 1 + runner.TAIL
