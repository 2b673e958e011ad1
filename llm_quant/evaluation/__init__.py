"""Measuring models: perplexity of reference and quantized model (``perplexity``) and the accuracy-budget layer
search built on it (``sensitivity``)."""
