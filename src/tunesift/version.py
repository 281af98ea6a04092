"""The version of tunesift (one place: the package face, the manifest and the CLI read it)."""

__version__ = "0.1.0"
