"""The HTTP side: Target-compatible routes and the application factory."""

from profilebase.server.web.app import create_app

__all__ = ["create_app"]
