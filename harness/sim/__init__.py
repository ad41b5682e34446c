"""The simulated LLM backend: exact, known timings, or a modelled GPU engine; faults on demand.

Run it with ``python -m harness.sim --port P`` or ``tokenbench sim``; read its
ground truth with ``harness.sim.writelog.read_write_log``. ``--mode engine``
models a continuous-batching engine on a profiled GPU (``engine.py``,
``scheduler.py``, ``roofline.py``, profiles in ``harness/hardware/data/*.yaml``);
``--grpc-port`` adds TGIS's gRPC API (``tgis_grpc.py``).
"""
