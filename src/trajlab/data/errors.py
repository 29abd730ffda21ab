"""The one exception type for user-facing data problems."""

from __future__ import annotations


class DataError(ValueError):
    """A data problem the user can fix: the message is one line saying what is wrong and what to do.

    Raised instead of letting a traceback escape from deep inside gzip, pickle, PIL or torch, e.g.
    ``DataError("/d/train-images-idx3-ubyte.gz: idx file has 100 bytes but its header needs 47040016;
    re-download it")`` (one line in practice).
    """
