"""profilebase: a self-hostable visitor-profile store that speaks Adobe Target's profile APIs."""

__version__ = "0.1.0"

from profilebase.client import Client  # noqa: E402 - needs __version__
from profilebase.config import Settings  # noqa: E402
from profilebase.errors import ProfilebaseError  # noqa: E402
from profilebase.push import PushResult, RowFailure  # noqa: E402
from profilebase.replies import BatchStatus, RemoteProfile  # noqa: E402
from profilebase.retry import RetryPolicy  # noqa: E402

__all__ = [
    "BatchStatus",
    "Client",
    "ProfilebaseError",
    "PushResult",
    "RemoteProfile",
    "RetryPolicy",
    "RowFailure",
    "Settings",
    "__version__",
]
