"""Measuring models: perplexity of reference and quantized model (``evaluate``) and the accuracy-budget layer
search built on it (``sensitivity``)."""
