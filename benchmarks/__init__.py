"""Decode-cost benchmarks: ``python benchmarks/decode_cost.py --help``."""
