"""TGIS's ``fmaas`` gRPC interface: ``generation.proto`` and its generated Python stubs.

The ``generation_pb2*.py`` files are generated (``python -m harness.sim.proto.generate``,
needs the dev dependency ``grpcio-tools``) and committed, so that running the sim
needs only ``grpcio`` and ``protobuf``.
"""
