"""Which exceptions are the user's to fix (printed as one line by the CLI) rather than bugs (full traceback)."""

from __future__ import annotations

_USER_ERRORS = {
    "CheckpointError", "NonFiniteLossError", "DatasetNotFoundError", "CheckpointMismatchError", "FormatError",
    "ConfigError", "VizError", "ShardsNotFoundError", "InteropError", "FileNotFoundError", "NotADirectoryError",
    "IsADirectoryError",
}


def is_user_error(e: BaseException) -> bool:
    return any(c.__name__ in _USER_ERRORS for c in type(e).__mro__)
