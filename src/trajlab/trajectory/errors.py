"""The one error type of ``trajlab.trajectory``."""

from __future__ import annotations


class TrajectoryError(ValueError):
    """A run directory's trajectory cannot be written or read as asked.

    The message is one line that names the file (and the step, where there is one) and says what to do.
    """
