"""The package version, in a module of its own so that anything can read it without importing the package's
face (which re-exports names from higher floors)."""

__version__ = "0.1.0"
