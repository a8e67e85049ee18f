"""The test runner of scripts/django-conformance: Django's DiscoverRunner, whose parallel workers survive
an exception that cannot be pickled.

Django's parallel runner sends each worker's results to the parent by pickling them; a test that raises
an exception that cannot be pickled (a ``RecursionError`` whose traceback is too deep for pickle, a
``TemplateDoesNotExist`` holding template engine objects) makes Django abort the whole run, so every test
after it goes unjudged. Here such an error is replaced by an ``UnpicklableError`` that carries the
original traceback as text: the test is still reported as the same FAIL or ERROR, and the run goes on.

The generated settings module names it as ``TEST_RUNNER``; this file is on the run's ``PYTHONPATH``.
"""

from __future__ import annotations

import pickle
import traceback
from types import TracebackType
from typing import Any

from django.test.runner import DiscoverRunner, ParallelTestSuite, RemoteTestResult, RemoteTestRunner

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

#: lines of the original traceback kept from its start and its end
HEAD, TAIL = 12, 40


class UnpicklableError(Exception):
    """A test's exception that could not be pickled, as text."""


def picklable(err: ExcInfo) -> ExcInfo:
    """Return ``err``, or a picklable stand-in with its traceback as text when pickle refuses it."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception as exc:
        lines = "".join(traceback.format_exception(err[1])).splitlines()
        if len(lines) > HEAD + TAIL:
            lines = [*lines[:HEAD], f"    ... {len(lines) - HEAD - TAIL} lines left out ...", *lines[-TAIL:]]
        text = "\n".join(lines)
        stand_in = UnpicklableError(f"{err[0].__qualname__}, which could not be pickled ({exc!r}):\n{text}")
        return UnpicklableError, stand_in, None
    return err


class Result(RemoteTestResult):
    def addError(self, test: Any, err: ExcInfo) -> None:
        super().addError(test, picklable(err))

    def addFailure(self, test: Any, err: ExcInfo) -> None:
        super().addFailure(test, picklable(err))

    def addSubTest(self, test: Any, subtest: Any, err: ExcInfo | None) -> None:
        super().addSubTest(test, subtest, None if err is None else picklable(err))

    def addExpectedFailure(self, test: Any, err: ExcInfo) -> None:
        super().addExpectedFailure(test, picklable(err))


class Runner(RemoteTestRunner):
    resultclass = Result


class Suite(ParallelTestSuite):
    runner_class = Runner


class ConformanceRunner(DiscoverRunner):
    """Django's test runner, with parallel workers that report unpicklable exceptions as text."""

    parallel_test_suite = Suite
