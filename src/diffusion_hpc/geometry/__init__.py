"""Rotations, cameras and projection (pure functions, batch first)."""
