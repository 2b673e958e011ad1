"""Pieces every stage shares: user-facing errors, optional imports, atomic outputs, manifests, CLI glue."""

from quant_common.errors import MissingDependencyError, QuantError, require

__all__ = ["MissingDependencyError", "QuantError", "require"]
