"""The one exception root of gradtune."""

from __future__ import annotations


class GradtuneError(Exception):
    """A user-facing error: bad spec, bad flag, bad plug-in. The CLI prints it as one
    line and exits with code 2."""
