"""Compressed request bodies: ``Content-Encoding: gzip`` is decompressed as the body streams.

Each step of decompression yields at most ``STEP`` bytes, so a small body that
inflates to gigabytes (a "gzip bomb") never does so in memory: the consumer counts
the decompressed bytes and refuses the body as soon as they pass its limit. Bodies
made of several gzip members (concatenated files) are read whole, as gzip(1) does.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from profilebase.errors import BatchRejected, BatchTooLarge, UnsupportedEncoding

#: The one coding besides ``identity`` that request bodies may use.
GZIP = "gzip"
#: Most decompressed bytes produced by one step.
STEP = 1024 * 1024
#: zlib's window bits for "gzip header and trailer, largest window".
GZIP_WBITS = 16 + zlib.MAX_WBITS


def content_coding(header: str) -> str | None:
    """The body's coding from a Content-Encoding value: None (identity) or ``gzip``.

    ``identity`` may appear and is ignored; anything else is refused with 415, naming
    what is supported. Names are case-insensitive; ``x-gzip`` is gzip (RFC 9110).
    """
    codings = [part.strip().lower() for part in header.split(",") if part.strip()]
    codings = [coding for coding in codings if coding != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in {GZIP, "x-gzip"}:
        return GZIP
    shown = header.strip()[:100]
    raise UnsupportedEncoding(
        f"Content-Encoding {shown!r} is not supported: send the body uncompressed, or "
        "compressed once with gzip and the header Content-Encoding: gzip."
    )


async def gunzip(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Decompress a gzip body as it arrives, in pieces of at most ``STEP`` bytes.

    The compressed body must also stay under ``limit`` bytes (a body of empty gzip
    members would otherwise be read for ever). Invalid or truncated data is refused
    with 400.
    """
    inflater = zlib.decompressobj(GZIP_WBITS)
    started = False  # the current member has had input
    compressed = 0
    async for chunk in chunks:
        compressed += len(chunk)
        if compressed >= limit:
            raise BatchTooLarge(
                f"The compressed body is {compressed:,} bytes or more; it must be smaller than "
                f"{limit:,} bytes (max_batch_bytes). Split the file into several batches."
            )
        data = chunk
        while True:
            started = started or bool(data)
            try:
                piece = inflater.decompress(data, STEP)
            except zlib.error:
                raise not_gzip() from None
            if piece:
                yield piece
            if inflater.eof:  # one member ended; what follows may be another
                data = inflater.unused_data
                inflater = zlib.decompressobj(GZIP_WBITS)
                started = False
                if not data:
                    break
                continue
            data = inflater.unconsumed_tail
            if not data and len(piece) < STEP:
                break  # all input used and no output held back
    if compressed == 0 or started:
        raise not_gzip(ended=compressed > 0)


@contextmanager
def sizes_decompressed(coding: str | None) -> Iterator[None]:
    """For a compressed body, say in a size refusal that the limits count it decompressed."""
    try:
        yield
    except BatchTooLarge as exc:
        if coding is None:
            raise
        raise BatchTooLarge(
            f"{exc.message} The limits count the body decompressed ({coding})."
        ) from None


def not_gzip(ended: bool = False) -> BatchRejected:
    problem = "ends in the middle of the compressed data" if ended else "is not gzip data"
    return BatchRejected(
        f"The body is declared Content-Encoding: gzip but {problem}. Send the whole file "
        "compressed with gzip, or send it uncompressed without that header."
    )
