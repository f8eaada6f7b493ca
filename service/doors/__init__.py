"""The front doors: thin adapters from a wire protocol to ``service.dataplane``.

- ``json_api``: the task JSON API (``/classify``, ``/translate``, ``/classify_image``, ``/models``);
- ``oip_rest``: the Open Inference Protocol v2 over HTTP (``/v2/...``);
- ``oip_grpc``: the Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``);
- ``oip``: what both OIP doors share (metadata, input tensors -> items, results -> output tensors);
- ``oip_codec``: OIP tensors <-> numpy (JSON, binary extension, gRPC raw contents).
"""
