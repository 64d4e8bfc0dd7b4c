"""profilebase: a self-hostable visitor-profile store that speaks Adobe Target's profile APIs."""

from profilebase.config import Settings
from profilebase.errors import ProfilebaseError

__all__ = ["ProfilebaseError", "Settings", "__version__"]
__version__ = "0.1.0"
