"""Statistics and calibrators: activation histograms from the model, then pure ``histogram -> amax`` functions."""
