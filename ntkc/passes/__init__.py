"""Passes of the structured-derivatives compiler, in pipeline order (see ntkc/pipeline.py)."""
