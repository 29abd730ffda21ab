"""The one error type that model building raises."""


class ModelError(ValueError):
    """A model name or argument that cannot be built; the message says what to change.

    Subclasses ``ValueError`` so that callers validating a config can catch either.
    """
