"""Exceptions raised by model export.

    ModelExportError            bad input: unknown model or layer, unreadable or malformed weights
     └── VersionExistsError     the target version directory exists (also a FileExistsError)
"""


class ModelExportError(Exception):
    """The export cannot proceed because of its input; the message says what to fix."""


class VersionExistsError(ModelExportError, FileExistsError):
    """The version directory already exists and overwrite was not requested."""
