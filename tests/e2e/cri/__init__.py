"""A minimal CRI (runtime.v1) client for the e2e tests: `api.proto` is compiled with grpcio-tools
at test time into a temporary directory (nothing generated is committed)."""
