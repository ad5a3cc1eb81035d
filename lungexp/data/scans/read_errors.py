"""The error every scan reader raises, and the useful part of SimpleITK's messages."""

from __future__ import annotations

from lungexp.utils.errors import LungexpError


class ScanReadError(LungexpError):
    """A scan file or folder that cannot be read; the message says which, why and what to do."""


def itk_message(error: Exception) -> str:
    """The informative last line of a SimpleITK exception (the first names a C++ source file)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
