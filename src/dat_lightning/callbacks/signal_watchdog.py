"""A preemption signal always ends the run, even when the training loop cannot get to it.

Python runs a signal handler in the main thread, between two bytecodes. A main thread blocked in
native code (a collective whose partner never arrives, a stuck read) never runs it, so a handler
that only sets a flag for the next step end would leave ``timeout`` or a scheduler's SIGTERM
unanswered forever. The C-level part of Python's handler still runs, and writes the signal number
to a wakeup socket (:func:`signal.set_wakeup_fd`); :class:`SignalWatchdog` reads that socket in a
thread of its own and ends the process when the main thread cannot honour the signal in time:

- a second preemption signal ends the process at once;
- after the first, the main thread's handler must acknowledge it within ``responsive_s`` seconds
  (else the main thread is blocked), and the run must have saved and stopped within ``grace_s``
  (a checkpoint being written extends that).

Ending means: one line on stderr naming the last checkpoint, the same signal forwarded to the
other ranks this process started, and ``os._exit(128 + signal)``. Data-loader workers leave the
signals to the training process (:func:`dat_lightning.data.faults.leave_preemption_to_the_parent`).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


class SignalWatchdog:
    """Ends the process when a preemption signal cannot be honoured (see the module docstring).

    Args:
        signals: the preemption signals.
        acknowledged: true once the main thread's handler has seen the signal.
        saving: true while a checkpoint is being written (the deadline waits for it).
        last_checkpoint: the newest checkpoint, named in the message.
        children: processes to forward the signal to (the other ranks of a DDP launch).
        grace_s: seconds from the first signal to the end of the run.
        responsive_s: seconds within which the main thread must acknowledge it.
    """

    def __init__(self, signals: Iterable[int], acknowledged: Callable[[], bool], saving: Callable[[], bool],
                 last_checkpoint: Callable[[], Path | None], children: Callable[[], Sequence[Any]],
                 grace_s: float = 60.0, responsive_s: float = 5.0) -> None:
        self.signals = {int(s) for s in signals}
        self.acknowledged, self.saving = acknowledged, saving
        self.last_checkpoint, self.children = last_checkpoint, children
        self.grace_s, self.responsive_s = float(grace_s), float(responsive_s)
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._previous_fd = -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Install the wakeup socket and start the thread (main thread only)."""
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="dat-signal-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Put the previous wakeup descriptor back and end the thread."""
        if self._writer is None:
            return
        signal.set_wakeup_fd(self._previous_fd, warn_on_full_buffer=False)
        writer, self._writer = self._writer, None
        writer.close()  # the reader sees end-of-file: the thread returns

    def _next_signal(self, timeout: float | None) -> int | None:
        """The next preemption signal within ``timeout`` seconds; -1 once the socket is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._reader], [], [], remaining)
            if not ready:
                return None
            try:
                data = self._reader.recv(64)
            except BlockingIOError:
                continue
            if not data:
                return -1
            found = [s for s in data if s in self.signals]
            if found:
                return found[0]

    def _watch(self) -> None:
        first = self._next_signal(None)
        if first is None or first < 0:
            return
        started = time.monotonic()
        while not self.acknowledged():
            if time.monotonic() - started > self.responsive_s:
                self._end(first, f"the training process did not respond within {self.responsive_s:g} s "
                                 "(blocked, e.g. waiting for another rank)")
            second = self._next_signal(0.1)
            if second == -1:
                return
            if second is not None:
                self._end(second, "a second signal")
        while True:
            second = self._next_signal(0.5)
            if second == -1:
                return
            if second is not None:
                self._end(second, "a second signal")
            if time.monotonic() - started > self.grace_s and not self.saving():
                self._end(first, f"the run could not save within {self.grace_s:g} s "
                                 "(callbacks.preemption.grace_s)")

    def _end(self, signum: int, reason: str) -> None:
        name = signal.Signals(signum).name
        last = self.last_checkpoint()
        if last is None:
            resume = "no checkpoint was written yet"
        elif last.name == "last.ckpt":  # what `ckpt_path: last` resumes from
            resume = f"the newest checkpoint is {last}: run the same command again to resume from it"
        else:
            resume = f"the newest checkpoint is {last}: resume from it with ckpt_path={last}"
        print(f"error: stopped by {name} without saving: {reason}; {resume}.", file=sys.stderr, flush=True)
        for child in self.children():
            try:
                child.send_signal(signum)
            except OSError:
                pass
        os._exit(128 + signum)
