"""Reproducible measurements, each printing JSON."""
