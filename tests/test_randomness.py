"""RandomBytes: slices of the kernel's random bytes, each handed out once, never shared
with a forked child."""

from __future__ import annotations

import os
import re
import signal
import uuid

from profilebase.server.randomness import RandomBytes


def test_ids_are_distinct_across_many_refills():
    pool = RandomBytes(chunk=64)  # a refill every four ids
    ids = [pool.hex_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    # uuid4().hex's shape: the version nibble 4, the variant 8 to b.
    assert all(re.fullmatch(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", i) for i in ids)
    # Every other nibble takes every value: the bytes are not a counter.
    for position in set(range(32)) - {12, 16}:
        assert len({i[position] for i in ids}) == 16, position


def test_a_slice_longer_than_the_chunk_is_whole_and_new():
    pool = RandomBytes(chunk=8)
    first, second = pool.take(100), pool.take(100)
    assert len(first) == len(second) == 100 and first != second
    assert len(pool.take(3)) == 3


def test_uuid4_is_a_version_4_uuid():
    pool = RandomBytes()
    made = pool.uuid4()
    assert made.version == 4 and made.variant == uuid.RFC_4122
    assert uuid.UUID(str(made)) == made and made != pool.uuid4()


def taken_in_a_child(pool: RandomBytes) -> bytes:
    """16 bytes the pool hands out in a forked child (which a deadlock ends after 10 s)."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.close(read)
        signal.alarm(10)
        os.write(write, pool.take(16))
        os._exit(0)
    os.close(write)
    from_child = os.read(read, 16)
    os.close(read)
    os.waitpid(child, 0)
    return from_child


def test_a_forked_child_takes_bytes_while_a_parents_thread_held_the_lock():
    """The child gets a lock of its own: one a parent's thread held at the fork would
    never be released in the child."""
    pool = RandomBytes()
    with pool._lock:  # as if another thread of the parent were inside take()
        from_child = taken_in_a_child(pool)
    assert len(from_child) == 16


def test_a_forked_child_never_hands_out_its_parents_bytes():
    pool = RandomBytes()
    pool.take(16)  # the parent's buffer now holds bytes not handed out yet
    from_child = taken_in_a_child(pool)
    assert len(from_child) == 16
    assert from_child != pool.take(16)
