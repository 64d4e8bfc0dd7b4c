"""Child processes kept running: started, restarted when one dies, stopped on a signal.

``profilebase worker --concurrency N`` and ``profilebase serve`` with several processes
are one parent and its children. The parent does no work of its own: it starts each
child (spawned, so that none inherits a database connection or a thread), starts
another in place of one that exits while it is not stopping, and on SIGTERM or SIGINT
asks every child to stop (SIGTERM) and waits for it. A child that exits soon after
it started (its database is down, say) is started again after a delay that doubles
each time, up to ``MAX_RESTART_DELAY``. A child started here dies with its parent, even
a parent killed by SIGKILL, so no orphan keeps serving or holding a lease.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import multiprocessing
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, Literal

from profilebase.errors import ProfilebaseError

log = logging.getLogger("profilebase.server.supervisor")
#: Linux's prctl option that sends a child a signal when its parent dies.
PR_SET_PDEATHSIG = 1
#: How children start: spawned, a fresh interpreter that inherits no connection or thread.
SPAWN: Literal["spawn"] = "spawn"
#: A child that lived this long had started well: its next restart waits no delay.
STARTED_WELL_SECONDS = 30.0
#: Longest wait before starting again a child that keeps exiting soon after its start.
MAX_RESTART_DELAY = 30.0


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set, so that a loop finishes its step and exits."""
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    return stop


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere nothing).

    A parent that stops cleanly stops its children first; one killed outright leaves them
    nothing to finish, as if they had been killed with it: their transactions roll back.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def freeze_start_up() -> None:
    """Put what a process made to start (modules, routes, caches: some 60,000 objects)
    out of the garbage collector's sight, once it has started (``gc.freeze``). A full
    collection walked them all, 10-30 ms during which a server process answers nothing;
    now it walks what came since. The garbage goes first, or it would be kept for good."""
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class Child:
    """A kind of child: what it is called in logs, the function it runs and its arguments."""

    name: str
    target: Callable[..., None]
    args: tuple[Any, ...]


def run_child(child: Child) -> None:
    """The first thing a spawned child does: die with its parent, then run its target.
    An error of ours (the database is unreachable, say) is one log line and exit status 3,
    not a traceback."""
    die_with_parent()
    try:
        child.target(*child.args)
    except ProfilebaseError as exc:
        log.error("%s process could not run: %s", child.name, exc.message)
        sys.exit(3)


class Supervisor:
    """Runs ``children`` until SIGTERM or SIGINT; a child that exits is started again."""

    def __init__(self, children: list[Child], stop_timeout: float) -> None:
        self.kinds = children
        self.stop_timeout = stop_timeout
        self.context = multiprocessing.get_context(SPAWN)
        self.running: list[BaseProcess | None] = []

    def start(self, kind: Child) -> BaseProcess:
        process = self.context.Process(target=run_child, args=(kind,), name=kind.name)
        process.start()
        return process

    def run(self) -> None:
        """1. Start every child. 2. Every second, look for children that exited; start each
        again, at once if it had run ``STARTED_WELL_SECONDS``, else after a delay doubled
        from one second for each quick exit in a row. 3. On a signal, SIGTERM every child,
        wait up to ``stop_timeout`` for each, and SIGKILL what is left."""
        stop = stop_on_signals()
        count = len(self.kinds)
        self.running = [self.start(kind) for kind in self.kinds]
        started = [time.monotonic()] * count
        delays = [0.0] * count
        due = [0.0] * count
        while not stop.wait(1.0):
            now = time.monotonic()
            for i, process in enumerate(self.running):
                if process is not None and not process.is_alive():
                    quick = now - started[i] < STARTED_WELL_SECONDS
                    delays[i] = min(max(2 * delays[i], 1.0), MAX_RESTART_DELAY) if quick else 0.0
                    log.error(
                        "%s process %s exited with %s; starting another%s",
                        self.kinds[i].name,
                        process.pid,
                        process.exitcode,
                        f" in {delays[i]:g} s" if delays[i] else "",
                    )
                    self.running[i], due[i] = None, now + delays[i]
                if self.running[i] is None and now >= due[i] and not stop.is_set():
                    self.running[i], started[i] = self.start(self.kinds[i]), now
        alive = [process for process in self.running if process is not None]
        for process in alive:
            if process.is_alive():
                process.terminate()  # SIGTERM: finish what is under way, then exit
        for process in alive:
            process.join(self.stop_timeout)
            if process.is_alive():
                log.warning("%s process %s did not stop; killed", process.name, process.pid)
                process.kill()
                process.join()
