"""The client side: the Python SDK (``Client``) and what ``profilebase push`` is built of.

It speaks HTTP to a profilebase server (or Adobe Target) and imports nothing of the
server: installing the SDK needs only httpx, click and rich.

    sdk.py       Client: batches, status, fetch, single updates, push
    push.py      reading a CSV export and planning it into batches
    csvinput.py  delimiter, encoding and quoting detection for messy CSVs
    replies.py   Target's XML and profilebase's JSON replies, parsed
    retry.py     which failures are retried and how long to wait
    console.py   progress bars and summaries for the CLI
"""

from profilebase.client.sdk import Client

__all__ = ["Client"]
