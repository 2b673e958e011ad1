"""Measuring models: COCO mAP, latency, FP32-vs-INT8 agreement, per-layer SQNR, predictions, reports."""
