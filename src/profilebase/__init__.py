"""profilebase: a self-hostable visitor-profile store that speaks Adobe Target's profile APIs.

The names here are the Python SDK's public surface; none of them imports the server.
"""

__version__ = "0.1.0"

from profilebase.client.push import PushResult, RowFailure  # noqa: E402
from profilebase.client.replies import BatchStatus, RemoteProfile  # noqa: E402
from profilebase.client.retry import RetryPolicy  # noqa: E402
from profilebase.client.sdk import Client  # noqa: E402 - needs __version__
from profilebase.errors import ProfilebaseError  # noqa: E402

__all__ = [
    "BatchStatus",
    "Client",
    "ProfilebaseError",
    "PushResult",
    "RemoteProfile",
    "RetryPolicy",
    "RowFailure",
    "__version__",
]
