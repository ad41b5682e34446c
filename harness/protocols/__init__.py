"""Wire protocols as registered specs: ``completions``, ``chat``, ``tgi``, ``tgis``, ``caikit-grpc``, ``caikit-http``.

``base`` says what a protocol owns (``ProtocolSpec``), ``registry`` lists
them (``get_protocol``), one module per protocol defines its ``SPEC``, and
``readiness`` waits for a server by its protocol's probes. Shared pieces:
``openai`` (completions + chat), ``caikit`` (both Caikit transports),
``jsonstream`` (SSE JSON decoding), ``grpc_health``, ``tls``; ``proto/`` holds
the TGIS and Caikit protos (the simulator imports the TGIS one from here).
"""
