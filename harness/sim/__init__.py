"""The simulated LLM backend: exact, known timings and faults on demand.

Run it with ``python -m harness.sim --port P`` or ``tokenbench sim``; read its
ground truth with ``harness.sim.writelog.read_write_log``.
"""
