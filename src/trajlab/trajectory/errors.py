"""The errors of ``trajlab.trajectory``."""

from __future__ import annotations


class TrajectoryError(ValueError):
    """A run directory's trajectory cannot be written or read as asked.

    The message is one line that names the file (and the step, where there is one) and says what to do.
    """


class DamageError(TrajectoryError):
    """A file of the run is missing, truncated or altered (its sha256, size or record checksum differs):
    the CLI exits with status 1 and says to run ``trajlab runs verify`` (or ``--no-verify`` to read
    anyway)."""
