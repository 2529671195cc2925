"""Sizes gpuhook accepts from the outside, and the volume-mount source, in one place that every
stage may import: a constant costs nothing on the fast path (no import here). The bounded
reads that use them are in gpuhook/files.py."""

DEV_NULL = "/dev/null"
MAX_STATE_BYTES = 1 << 20  # the hook's state on stdin
MAX_SPEC_BYTES = 16 << 20  # a bundle's config.json
MAX_LD_CACHE_BYTES = 64 << 20  # the host's /etc/ld.so.cache (a full desktop has ~2 MiB)
MAX_CONFIG_BYTES = 1 << 20  # the TOML config
MAX_INVENTORY_BYTES = 16 << 20  # a fake inventory YAML
MAX_HOST_FILE_BYTES = 1 << 20  # one file under host-root (proc/devices, mig-minors, ...)
MAX_MESSAGE_CHARS = 2048  # one error line on stderr or in runc's log
