"""The ntkc benchmark suite: `python -m bench` or `ntkc bench` (see bench/suite.py)."""
