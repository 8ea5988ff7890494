"""The test run cannot hang after its summary (tests/exit_watchdog.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).parent


def run_pytest(tmp_path: Path, body: str) -> tuple[subprocess.CompletedProcess, float]:
    (tmp_path / "test_left_behind.py").write_text(body)
    env = {**os.environ, "PYTHONPATH": str(TESTS), "DAT_TEST_EXIT_TIMEOUT": "3"}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "exit_watchdog", "-p", "no:cacheprovider",
                             str(tmp_path / "test_left_behind.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - start


def test_a_thread_left_running_ends_the_run_with_its_stack(tmp_path):
    result, seconds = run_pytest(tmp_path, (
        "import threading, time\n"
        "def sleep_forever():\n    time.sleep(3600)\n"
        "def test_passes():\n    threading.Thread(target=sleep_forever).start()\n"))
    assert "1 passed" in result.stdout
    assert result.returncode == 1 and seconds < 60
    assert "sleep_forever" in result.stderr  # the stack of the thread that kept it alive


def test_a_clean_run_exits_at_once_with_its_own_status(tmp_path):
    result, seconds = run_pytest(tmp_path, "def test_passes():\n    pass\n")
    assert result.returncode == 0 and seconds < 30
