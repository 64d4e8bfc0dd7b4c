"""Child processes kept running: started, restarted when one dies, stopped on a signal.

``profilebase worker --concurrency N`` and ``profilebase serve`` with several processes
are one parent and its children. The parent does no work of its own: it starts each
child (spawned, so that none inherits a database connection or a thread), starts
another in place of one that exits while it is not stopping, and on SIGTERM or SIGINT
asks every child to stop (SIGTERM) and waits for it. A child started here dies with
its parent, even a parent killed by SIGKILL, so no orphan keeps serving or holding a
lease.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger("profilebase.server.supervisor")
#: Linux's prctl option that sends a child a signal when its parent dies.
PR_SET_PDEATHSIG = 1


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


@dataclass(frozen=True)
class Child:
    """A kind of child: what it is called in logs, the function it runs and its arguments."""

    name: str
    target: Callable[..., None]
    args: tuple[Any, ...]


def run_child(child: Child) -> None:
    """The first thing a spawned child does: die with its parent, then run its target."""
    die_with_parent()
    child.target(*child.args)


class Supervisor:
    """Runs ``children`` until SIGTERM or SIGINT; a child that exits is started again."""

    def __init__(self, children: list[Child], stop_timeout: float) -> None:
        self.kinds = children
        self.stop_timeout = stop_timeout
        self.context = multiprocessing.get_context("spawn")
        self.running: list[BaseProcess] = []

    def start(self, kind: Child) -> BaseProcess:
        process = self.context.Process(target=run_child, args=(kind,), name=kind.name)
        process.start()
        return process

    def run(self) -> None:
        """1. Start every child. 2. Every second, restart any that has exited (unless
        stopping). 3. On a signal, SIGTERM every child, wait up to ``stop_timeout`` for
        each, and SIGKILL what is left."""
        stop = stop_on_signals()
        self.running = [self.start(kind) for kind in self.kinds]
        while not stop.wait(1.0):
            for i, process in enumerate(self.running):
                if not process.is_alive() and not stop.is_set():
                    log.error(
                        "%s process %s exited with %s; starting another",
                        self.kinds[i].name,
                        process.pid,
                        process.exitcode,
                    )
                    self.running[i] = self.start(self.kinds[i])
        for process in self.running:
            if process.is_alive():
                process.terminate()  # SIGTERM: finish what is under way, then exit
        for process in self.running:
            process.join(self.stop_timeout)
            if process.is_alive():
                log.warning("%s process %s did not stop; killed", process.name, process.pid)
                process.kill()
                process.join()
