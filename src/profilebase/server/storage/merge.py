"""The merge rules' former home, kept only for ``storage/imports.py`` until it imports
them from ``profilebase.server.merge``, where they live now."""

from profilebase.server.merge import MAX_BYTES_PER_CHAR, byte_size, merge_attrs

__all__ = ["MAX_BYTES_PER_CHAR", "byte_size", "merge_attrs"]
