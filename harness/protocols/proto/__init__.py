"""TGIS's ``fmaas`` gRPC interface (owned by the ``tgis`` protocol; the sim imports it from here).

The ``generation_pb2*.py`` files are generated (``python -m harness.protocols.proto.generate``,
needs the dev dependency ``grpcio-tools``) and committed, so that running the sim
needs only ``grpcio`` and ``protobuf``.
"""
