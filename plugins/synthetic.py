"""Synthetic MVTec-like dataset plugin."""
