"""cargohold: an enterprise container image registry."""

__version__ = "0.1.0"
