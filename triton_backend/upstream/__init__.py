"""Facts read from upstream sources, as data (see quant_common.facts)."""
