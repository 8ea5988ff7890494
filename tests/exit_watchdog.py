"""A pytest plugin: a test run that has reported its results but does not exit is ended.

A thread or child process a test leaves behind can keep the interpreter from exiting after the
summary, and CI then runs into its time limit with every result printed and nothing said about
why. After ``DAT_TEST_EXIT_TIMEOUT`` seconds (default 120) this prints every thread's stack and
exits with status 1.
"""

from __future__ import annotations

import faulthandler
import os
import sys


def pytest_unconfigure(config) -> None:
    timeout = float(os.environ.get("DAT_TEST_EXIT_TIMEOUT", "120"))
    faulthandler.dump_traceback_later(timeout, exit=True, file=sys.__stderr__)
