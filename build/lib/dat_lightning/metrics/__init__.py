"""Measurements of a DAT model: sample quality, robustness, calibration, OOD detection."""
