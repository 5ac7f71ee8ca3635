"""Generated protobuf and gRPC stubs for authz.v1 (see scripts/gen_proto.py)."""
