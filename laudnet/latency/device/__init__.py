"""Measuring the sparse engine on this device: calibrating a profile and validating its predictions."""
