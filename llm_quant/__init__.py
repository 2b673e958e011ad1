"""llm_quant."""
