"""Deepfake video detector: sampled face crops -> CNN per frame -> LSTM over time -> REAL/FAKE."""

__version__ = "0.1.0"
