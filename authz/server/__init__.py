"""The gRPC server of authz: Envoy ext_authz v3 and authz.v1 over one port, `authz serve`."""
