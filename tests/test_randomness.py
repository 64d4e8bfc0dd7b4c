"""RandomBytes: slices of the kernel's random bytes, each handed out once, never shared
with a forked child."""

from __future__ import annotations

import os
import re
import uuid

from profilebase.server.randomness import RandomBytes


def test_ids_are_distinct_across_many_refills():
    pool = RandomBytes(chunk=64)  # a refill every four ids
    ids = [pool.hex_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    # Every nibble value turns up in every position: the bytes are not a counter.
    for position in range(32):
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


def test_a_forked_child_never_hands_out_its_parents_bytes():
    pool = RandomBytes()
    pool.take(16)  # the parent's buffer now holds bytes not handed out yet
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, pool.take(16))
        os._exit(0)
    os.close(write)
    from_child = os.read(read, 16)
    os.close(read)
    os.waitpid(child, 0)
    assert len(from_child) == 16
    assert from_child != pool.take(16)
