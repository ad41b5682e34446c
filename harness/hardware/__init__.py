"""GPU and model profiles and the pure VRAM sizing arithmetic on them.

Why a product package: the simulator's engine mode and the harness's own
pre-flight KV-fit estimate (``harness/kvfit.py``) need the same figures and
the same arithmetic (weight bytes, KV bytes per token, the VRAM plan). They
live here; ``harness.sim`` imports them, and product code never imports the sim.
"""
