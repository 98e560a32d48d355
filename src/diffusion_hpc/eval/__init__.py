"""Evaluation: pose metrics (MPJPE, PA-MPJPE, PCK) and benchmark protocols (:mod:`.metrics`)."""
