"""Sizes gpuhook accepts from the outside, and the volume-mount source, in one place that every
stage may import: a constant costs nothing on the fast path (no other import here)."""

DEV_NULL = "/dev/null"
MAX_STATE_BYTES = 1 << 20  # the hook's state on stdin
MAX_SPEC_BYTES = 16 << 20  # a bundle's config.json
MAX_LD_CACHE_BYTES = 64 << 20  # the host's /etc/ld.so.cache (a full desktop has ~2 MiB)
