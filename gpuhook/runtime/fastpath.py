"""What the hook does before importing anything heavy: read two small JSON documents and decide
whether the container could have asked for anything at all.

`import json` costs about 5.7 ms on Debian's python3.11 (json.decoder pulls in `re` and `enum`),
half of the interpreter's whole start-up, and this path runs on every container start on the
node. So the documents are parsed by the C scanner that `json` itself uses (`_json`), driven
directly (gpuhook/fastjson.py); any error falls back to the full, validating path, which uses
`json` and names the problem. No `typing` import here either (~7 ms), nor `__future__`: the
annotations here are valid at run time. Measured in bench/run (P1, importtime).
"""

from gpuhook.fastjson import loads
from gpuhook.limits import DEV_NULL, MAX_SPEC_BYTES, MAX_STATE_BYTES
from gpuhook.runtime.early import DEFAULT_VOLUME_MOUNT_ROOT

__all__ = ["DEV_NULL", "MAX_SPEC_BYTES", "MAX_STATE_BYTES", "loads", "might_request"]



def might_request(spec: object, roots: "tuple[str, ...]" = (DEFAULT_VOLUME_MOUNT_ROOT,)) -> bool:
    """False only when no config could make this spec request anything: no /dev/null mount
    under one of `roots` (a device-plugin id or MIG capability: the default root and the
    configured one, see early.py), no NVIDIA_* or CUDA_VERSION env entry and no cdi.k8s.io/
    annotation (the device plugin's CDI requests). Anything unexpected answers True, so the
    full, validating path decides. Paths are compared as the toolkit does, cleaned
    (`/dev/./null`, `//var/run/...`): any source that cleans to /dev/null has a `null`
    component, so containing "null" is the cheap, safe test, and the destination is compared
    with its empty and `.` components dropped."""
    if not isinstance(spec, dict):
        return True
    mounts = spec.get("mounts") or []
    process = spec.get("process")
    if not isinstance(mounts, list) or not isinstance(process, dict):
        return True
    prefixes = tuple(_clean(r) for r in roots)
    for m in mounts:
        if not isinstance(m, dict):
            return True
        source = m.get("source")
        if source is None:
            continue
        if not isinstance(source, str):
            return True
        if "null" in source:
            dest = m.get("destination")
            if not isinstance(dest, str) or ".." in dest or _clean(dest).startswith(prefixes):
                return True
    env = process.get("env") or []
    if not isinstance(env, list):
        return True
    for item in env:
        if not isinstance(item, str) or item.startswith(("NVIDIA_", "CUDA_VERSION=")):
            return True
    annotations = spec.get("annotations") or {}
    if not isinstance(annotations, dict):
        return True
    return any(not isinstance(k, str) or k.startswith("cdi.k8s.io/") for k in annotations)


def _clean(path: str) -> str:
    """`path` with empty and `.` components dropped, ending in "/" (a prefix test then matches
    whole components only)."""
    return "/" + "".join(p + "/" for p in path.split("/") if p and p != ".")
