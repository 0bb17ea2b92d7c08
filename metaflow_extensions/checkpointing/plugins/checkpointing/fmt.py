"""Human-readable formatting shared by log lines, the CLI and the card."""

from __future__ import annotations


def human_size(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; whole bytes below 1 KiB."""
    if n < 1024:
        return "%d B" % n
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if n < 1024 or unit == "TiB":
            return "%.1f %s" % (n, unit)
    return "%d B" % n  # not reached


def describe_error(error: BaseException) -> str:
    """``"Type: message"`` of an exception (our errors' ``message``, else ``str()``), or just
    the type's name when it has no message: how log lines and errors name another error."""
    message = getattr(error, "message", None) or str(error)
    return "%s: %s" % (type(error).__name__, message) if message else type(error).__name__
