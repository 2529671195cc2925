"""CDI device names: NVIDIA's kinds and the qualified-name rules of the CDI package's parser
(container-device-interface v1.1.0 pkg/parser/parser.go: vendor and class start with a letter,
end with a letter or digit, and hold letters, digits, '_', '-', '.'; a device name starts and
ends with a letter or digit and may also hold ':'). Pure."""

from __future__ import annotations

from gpuhook.text import re_match

VENDOR = "nvidia.com"
GPU_CLASS = "gpu"
IMEX_CLASS = "imex-channel"
GPU_KIND = f"{VENDOR}/{GPU_CLASS}"
IMEX_KIND = f"{VENDOR}/{IMEX_CLASS}"

_VENDOR_OR_CLASS = r"^[A-Za-z]([A-Za-z0-9_.\-]*[A-Za-z0-9])?$"
_DEVICE_NAME = r"^[A-Za-z0-9]([A-Za-z0-9_.:\-]*[A-Za-z0-9])?$"


def qualified_name(kind: str, name: str) -> str:
    return f"{kind}={name}"


def parse_qualified_name(text: str) -> tuple[str, str, str] | None:
    """`<vendor>/<class>=<name>` -> (vendor, class, name), or None when it is not a valid fully
    qualified CDI device name."""
    kind, sep, name = text.partition("=")
    vendor, slash, cls = kind.partition("/")
    if not sep or not slash or not vendor or not cls or not name:
        return None
    if not (re_match(_VENDOR_OR_CLASS, vendor) and re_match(_VENDOR_OR_CLASS, cls)
            and re_match(_DEVICE_NAME, name)):
        return None
    return vendor, cls, name
