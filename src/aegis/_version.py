"""The one version of aegis: pyproject.toml reads it (``dynamic = ["version"]``) and
``aegis.__version__`` re-exports it, so the installed metadata and the package agree."""

__version__ = "0.1.0"
