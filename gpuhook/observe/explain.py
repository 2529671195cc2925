"""`gpuhook explain ID|POD`: the decision log's records about one container or one pod, told as
what was asked, what was granted, what was ignored and why. Pure: text in, text out."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

MAX_LOG_TAIL = 32 << 20  # read at most the log's last 32 MiB
MIN_PREFIX = 6  # a container or sandbox id may be given by a prefix this long


def safe(value: object) -> str:
    """A value for the terminal: what is not printable (an escape sequence, a newline from a
    container's spec or env) is shown escaped, never sent as is."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def parse_records(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines log; a torn or foreign line is skipped."""
    found = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            found.append(rec)
    return found


def _pod(rec: dict[str, Any]) -> dict[str, str]:
    pod = rec.get("pod")
    return {k: v for k, v in pod.items() if isinstance(v, str)} if isinstance(pod, dict) else {}


def matches(rec: dict[str, Any], query: str) -> bool:
    """ID: a container id (or a prefix of MIN_PREFIX characters or more); POD: NAME,
    NAMESPACE/NAME, NAMESPACE/NAME/CONTAINER or the sandbox id."""
    cid = rec.get("id")
    if isinstance(cid, str) and (cid == query or (len(query) >= MIN_PREFIX
                                                  and cid.startswith(query))):
        return True
    pod = _pod(rec)
    if not pod:
        return False
    ns, name, ctr = pod.get("namespace", ""), pod.get("name", ""), pod.get("container", "")
    sandbox = pod.get("sandbox_id", "")
    return query in (name, f"{ns}/{name}", f"{ns}/{name}/{ctr}") or bool(
        sandbox and (sandbox == query or (len(query) >= MIN_PREFIX
                                          and sandbox.startswith(query))))


def select(records: Iterable[dict[str, Any]], query: str) -> list[dict[str, Any]]:
    return [r for r in records if matches(r, query)]


def _devices(rec: dict[str, Any]) -> str:
    out = []
    for d in rec.get("devices") or []:
        if isinstance(d, dict):
            kind = "MIG" if d.get("kind") == "mig" else "GPU"
            out.append(f"{kind} {d.get('index')} ({d.get('uuid')})")
    return ", ".join(out)


def _asked(rec: dict[str, Any]) -> str:
    ids = rec.get("device_ids") or []
    source = rec.get("source") or "none"
    env = rec.get("nvidia_env") or {}
    parts = []
    if ids:
        parts.append(f"{', '.join(map(str, ids))} through {source}")
    if isinstance(env, dict) and env:
        parts.append("env " + " ".join(f"{k}={v}" for k, v in sorted(env.items())))
    return "; ".join(parts) or "nothing gpuhook acts on"


OUTCOME = {
    "applied": "granted",
    "apply": "granted",
    "empty": "nothing granted",
    "refused": "REFUSED: the container was not started",
    "apply-failed": "REFUSED: applying the plan failed",
    "untouched-broken-config": "nothing granted: the config does not load",
}


def render(records: list[dict[str, Any]]) -> str:
    """One block per container, oldest first, each event on its own lines."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_id.setdefault(str(rec.get("id", "?")), []).append(rec)
    blocks = []
    for cid, recs in by_id.items():
        pod = _pod(recs[-1])
        head = f"container {cid}"
        if pod:
            head += (f"  pod {pod.get('namespace', '?')}/{pod.get('name', '?')}"
                     + (f"  container {pod['container']}" if "container" in pod else ""))
        lines = [head]
        for rec in recs:
            decision = str(rec.get("decision", "?"))
            lines.append(f"  {rec.get('time', '?')} {rec.get('event', '?')}: "
                         f"{OUTCOME.get(decision, decision)}")
            lines.append(f"    asked:   {_asked(rec)}")
            got = _devices(rec)
            if got:
                lines.append(f"    got:     {got}")
            for ign in rec.get("ignored") or []:
                if isinstance(ign, dict):
                    lines.append(f"    ignored: {ign.get('source')} {ign.get('value')!r}: "
                                 f"{ign.get('reason')}")
            if rec.get("error"):
                lines.append(f"    error:   {rec['error']}")
            for problem in rec.get("config_errors") or []:
                lines.append(f"    config:  {problem}")
            for note in rec.get("notes") or []:
                lines.append(f"    note:    {note}")
        blocks.append("\n".join(safe(line) for line in lines))
    return "\n\n".join(blocks) + "\n"


def not_found(query: str, log: str, count: int) -> str:
    return (f"no decision about {query!r} in {log} ({count} records read). gpuhook logs only "
            "containers that could ask for a GPU (a device-plugin mount under the volume-mount "
            "root, or an NVIDIA_* / CUDA_VERSION env entry): a pod without one got no GPU "
            "because it asked for none; check its resource limits (nvidia.com/gpu) and the "
            "device plugin's DEVICE_LIST_STRATEGY=volume-mounts")
