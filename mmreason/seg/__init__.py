"""Reasoning segmentation: test-time scaling and mask-level helpers."""
