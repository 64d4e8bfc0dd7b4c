"""Random bytes from the operating system, read a few kilobytes at a time.

A page call without a tntId mints one, and one without a requestId a request id: two
``uuid4`` calls, each an ``os.urandom`` system call, were a fifth of a page call's time
under load on the event loop (py-spy, docs/design.md "The short way in"). ``RandomBytes``
reads ``os.urandom`` 4 KiB at a time and hands out slices: the same bytes the kernel's
generator gives, so ids stay unpredictable, for one system call per 256 ids. A forked
child starts with an empty buffer, so that it never hands out its parent's bytes.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref

#: Bytes read from the kernel at once.
CHUNK = 4096


class RandomBytes:
    """Slices of ``os.urandom`` output, each handed out once (thread-safe)."""

    def __init__(self, chunk: int = CHUNK) -> None:
        self.chunk = chunk
        self._empty()
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: RandomBytes._empty_in_child(me))

    @staticmethod
    def _empty_in_child(me: weakref.ref[RandomBytes]) -> None:
        pool = me()
        if pool is not None:
            pool._empty()

    def _empty(self) -> None:
        """No bytes held, and a new lock (a thread of the parent may have held the old)."""
        self._lock = threading.Lock()
        self._buffer = b""
        self._at = 0

    def take(self, size: int) -> bytes:
        """``size`` random bytes never handed out before (a slice of the buffer; a new
        buffer of ``chunk`` bytes, or of ``size`` if larger, when it runs short)."""
        with self._lock:
            end = self._at + size
            if end > len(self._buffer):
                self._buffer = os.urandom(max(self.chunk, size))
                self._at, end = 0, size
            taken = self._buffer[self._at : end]
            self._at = end
            return taken

    def hex_id(self) -> str:
        """A version-4 UUID as 32 lower-case hex digits, as ``uuid4().hex`` makes one."""
        return self.uuid4().hex

    def uuid4(self) -> uuid.UUID:
        """A version-4 UUID, as ``uuid.uuid4()`` makes one."""
        return uuid.UUID(bytes=self.take(16), version=4)


random_bytes = RandomBytes()
