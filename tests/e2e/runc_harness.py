"""Run real `runc` containers from a busybox-static rootfs, with gpuhook as the prestart hook.

Shared by the e2e suites (hook, MIG, .deb, benchmarks, podman). The API, smallest first:

    reason = skip_reason()                     # None, or why this machine can't run containers
    base = build_rootfs(tmp / "rootfs")        # once per session: busybox + applet links
    cfg = write_config(tmp / "gpuhook.toml", fake="8xa100-mig", log_file=tmp / "log.jsonl")
    bundle = make_bundle(tmp / "b", base, BundleOptions(
        request_ids=("1",), env=("NVIDIA_VISIBLE_DEVICES=all",),
        args=probe_args(["/dev/nvidia1"]), hook=hook_command(cfg)))
    result = run_container(bundle, mode="v1")  # or "v2": own mount ns with cgroup2 at
                                               # /sys/fs/cgroup, own `runc --root`
    result.ok, result.stderr, result.probes["/dev/nvidia1"].read == "ENXIO"

Opening a char device in the container gives ENXIO when the device cgroup allows it (no driver
for the fake majors on this machine) and EPERM when it denies it: the probe reports exactly that,
per path, for a read-only and a write-only open. Every run deletes its container (`runc delete
-f`) and its cgroup, and records first whether runc left one behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "gpuhook" / "fake"
DEFAULT_HOOK_PATH = REPO / ".venv" / "bin" / "gpuhook"
BUSYBOX = Path("/bin/busybox")
VOLUME_MOUNT_ROOT = "/var/run/nvidia-container-devices"
APPLETS = ("sh", "cat", "ls", "stat", "test", "[", "echo", "tr", "sleep", "true", "id", "touch")
# Docker's default capability set: what an ordinary "unprivileged" container gets. It includes
# CAP_DAC_OVERRIDE, so a write-open of a 0444 node reaches the device cgroup (EPERM) instead of
# stopping at the file mode (EACCES).
DEFAULT_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")
MINIMAL_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LC_ALL": "C"}


def mode_skip_reason(mode: str) -> str | None:
    """Why runc can't run in cgroup `mode` here (None when it can). v1 needs the host's
    /sys/fs/cgroup to be a v1 (or hybrid) layout; v2 works on both (own mount ns)."""
    if mode == "v1" and _is_cgroup2("/sys/fs/cgroup"):
        return ("the host is pure cgroup v2: runc's v1 mode needs the v1 devices controller "
                "at /sys/fs/cgroup/devices (a hybrid or v1 host)")
    return None


def _is_cgroup2(path: str) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        fstypes = [line.split(" - ", 1)[1].split()[0] for line in f
                   if line.split()[4] == path and " - " in line]
    return bool(fstypes) and fstypes[-1] == "cgroup2"


def skip_reason() -> str | None:
    """Why real containers can't run here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (runc, mknod, cgroups)"
    if shutil.which("runc") is None:
        return "runc is not installed (apt-get install runc)"
    if not BUSYBOX.is_file():
        return "busybox-static is not installed (/bin/busybox)"
    if shutil.which("unshare") is None:
        return "unshare is not installed (util-linux)"
    return None


# ---------------------------------------------------------------------------------------------
# rootfs, spec, config


def build_rootfs(dest: Path) -> Path:
    """A minimal rootfs: static busybox, links for the probe's applets, mount point dirs."""
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc", "var/run"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for name in APPLETS:
        link = dest / "bin" / name
        if not link.is_symlink():
            link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    return dest


def copy_rootfs(src: Path, dest: Path) -> Path:
    """A private copy of `src` (busybox hard-linked: cheap, and the rootfs is read-only)."""
    def link_or_copy(s: str, d: str) -> object:
        try:
            os.link(s, d)
            return d
        except OSError:
            return shutil.copy2(s, d)

    shutil.copytree(src, dest, symlinks=True, copy_function=link_or_copy)
    return dest


_SPEC_TEMPLATE: dict[str, Any] = {}


def runc_spec() -> dict[str, Any]:
    """A fresh copy of `runc spec`'s default config (generated once per process)."""
    if not _SPEC_TEMPLATE:
        tmp = Path(f"/tmp/gpuhook-runc-spec-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            subprocess.run(["runc", "spec"], cwd=tmp, check=True, env=MINIMAL_ENV,
                           capture_output=True)
            _SPEC_TEMPLATE.update(json.loads((tmp / "config.json").read_text()))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    spec: dict[str, Any] = json.loads(json.dumps(_SPEC_TEMPLATE))
    return spec


def write_config(path: Path, *, fake: str = "8xa100-mig", log_file: Path | str,
                 fake_root: Path = FAKE, extra: Mapping[str, Any] | None = None) -> Path:
    """A gpuhook config pointing at a shipped fake inventory + host tree (`fake`: "1gpu" or
    "8xa100-mig"); `extra` adds top-level keys (`{"allow-mig-monitor-unprivileged": True}`)."""
    keys: dict[str, Any] = {
        "inventory": str(fake_root / "inventories" / f"{fake}.yaml"),
        "host-root": str(fake_root / "hosts" / fake),
        "log-file": str(log_file),
        "driver-files": False,  # the shipped fake hosts have no driver (tests/fakedriver has)
    }
    keys.update(extra or {})
    path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in keys.items()))
    return path


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, str)):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def hook_command(config: Path | str | None, hook_path: Path | str = DEFAULT_HOOK_PATH,
                 ) -> list[str]:
    """The prestart hook as a command line: [path, argv0 ...]."""
    cmd = [str(hook_path), "gpuhook", "hook", "prestart"]
    if config is not None:
        cmd += ["--config", str(config)]
    return cmd


@dataclass(frozen=True)
class SpecDevice:
    """A `linux.devices` entry (runc creates the node); no cgroup allow rule is added."""
    path: str
    major: int
    minor: int
    type: str = "c"
    file_mode: int = 0o666


@dataclass(frozen=True)
class BundleOptions:
    args: Sequence[str] = ("true",)
    env: Sequence[str] = ()  # "KEY=VALUE", added after PATH
    # ids for the device plugin's mounts: /dev/null -> /var/run/nvidia-container-devices/<id>
    request_ids: Sequence[str] = ()
    extra_mounts: Sequence[Mapping[str, Any]] = ()
    privileged: bool = False  # adds CAP_SYS_ADMIN to the capability sets
    devices: Sequence[SpecDevice] = ()
    # [path, argv0, args...]; None: no hook at all
    hook: Sequence[str] | None = None
    hook_env: Sequence[str] = ()
    hook_timeout: int | None = 30
    copy_rootfs: bool = True  # False: root.path is the shared rootfs itself (absolute)
    rootfs_readonly: bool = True
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Bundle:
    path: Path
    rootfs: Path
    spec: dict[str, Any]
    cgroups_path: str  # unique; runc creates and removes it

    @property
    def config_json(self) -> Path:
        return self.path / "config.json"

    def write_spec(self) -> None:
        self.config_json.write_text(json.dumps(self.spec, indent=1))


def make_bundle(path: Path, rootfs: Path, opts: BundleOptions) -> Bundle:
    """Create bundle dir `path` (rootfs copied from `rootfs` unless opts.copy_rootfs is False)
    with a config.json from `runc spec`, edited per `opts`. Edit `bundle.spec` and call
    `bundle.write_spec()` for anything not covered by the options (attack bundles do)."""
    path.mkdir(parents=True)
    if opts.copy_rootfs:
        own = copy_rootfs(rootfs, path / "rootfs")
        root_path = "rootfs"
    else:
        own = rootfs
        root_path = str(rootfs)
    spec = runc_spec()
    proc = spec["process"]
    proc["terminal"] = False
    proc["args"] = list(opts.args)
    proc["env"] = [f"PATH={MINIMAL_ENV['PATH']}", *opts.env]
    caps = list(DEFAULT_CAPS) + (["CAP_SYS_ADMIN"] if opts.privileged else [])
    proc["capabilities"] = {k: list(caps) for k in ("bounding", "effective", "permitted")}
    proc["noNewPrivileges"] = True
    spec["root"] = {"path": root_path, "readonly": opts.rootfs_readonly}
    spec["hostname"] = "gpuhook-e2e"
    for rid in opts.request_ids:
        spec["mounts"].append({"destination": f"{VOLUME_MOUNT_ROOT}/{rid}", "type": "bind",
                               "source": "/dev/null", "options": ["rbind", "ro"]})
    spec["mounts"].extend(dict(m) for m in opts.extra_mounts)
    linux = spec["linux"]
    cgroups_path = f"/gpuhook-e2e-{uuid.uuid4().hex[:12]}"
    linux["cgroupsPath"] = cgroups_path
    if opts.devices:
        linux["devices"] = [{"path": d.path, "type": d.type, "major": d.major,
                             "minor": d.minor, "fileMode": d.file_mode, "uid": 0, "gid": 0}
                            for d in opts.devices]
    if opts.hook is not None:
        hook: dict[str, Any] = {"path": opts.hook[0], "args": list(opts.hook[1:]),
                                "env": [f"PATH={MINIMAL_ENV['PATH']}", *opts.hook_env]}
        if opts.hook_timeout:
            hook["timeout"] = opts.hook_timeout
        spec["hooks"] = {"prestart": [hook]}
    if opts.annotations:
        spec["annotations"] = dict(opts.annotations)
    bundle = Bundle(path, own, spec, cgroups_path)
    bundle.write_spec()
    return bundle


# ---------------------------------------------------------------------------------------------
# the in-container probe

# For each path argument: does it exist, what is it, and what does a read-only and a write-only
# open say. Writes are attempted only on existing paths (`>>` would create a file).
_PROBE = r"""
errno_of() {
  case "$1" in
    *"No such device or address"*) echo ENXIO ;;
    *"Operation not permitted"*) echo EPERM ;;
    *"Permission denied"*) echo EACCES ;;
    *"no such file"*|*"No such file"*) echo ENOENT ;;
    *"Read-only file system"*) echo EROFS ;;
    *"Is a directory"*) echo EISDIR ;;
    *) echo "OTHER:$1" | tr '|\n' '/ ' ;;
  esac
}
mode=paths
for p in "$@"; do
  if [ "$p" = "--ls" ]; then mode=ls; continue; fi
  if [ "$mode" = ls ]; then
    if [ -d "$p" ]; then echo "LS|$p|1|$(ls -A "$p" | tr '\n' ' ')"; else echo "LS|$p|0|"; fi
    continue
  fi
  if [ -e "$p" ] || [ -L "$p" ]; then
    t=$(stat -c '%F|%t:%T|%a|%u:%g' "$p" 2>&1 | tr -d '\n')
    r=$( (exec 3<"$p") 2>&1 ) && r=OK || r=$(errno_of "$r")
    w=$( (exec 3>>"$p") 2>&1 ) && w=OK || w=$(errno_of "$w")
    echo "PROBE|$p|1|$t|$r|$w"
  else
    echo "PROBE|$p|0|||||"
  fi
done
echo "PROBE-DONE"
"""


def probe_args(paths: Sequence[str], list_dirs: Sequence[str] = ("/dev",)) -> list[str]:
    """Container args that probe `paths` and list the entries of `list_dirs`."""
    return ["sh", "-c", _PROBE, "probe", *paths, "--ls", *list_dirs]


@dataclass(frozen=True)
class Probe:
    path: str
    exists: bool
    kind: str = ""  # stat %F: "character special file", "regular file", ...
    major: int = -1
    minor: int = -1
    mode: int = -1
    owner: str = ""  # "uid:gid"
    read: str = ""  # OK | ENXIO | EPERM | EACCES | ENOENT | OTHER:...
    write: str = ""

    @property
    def is_char(self) -> bool:
        return self.kind == "character special file"


def parse_probe(stdout: str) -> tuple[dict[str, Probe], dict[str, list[str] | None]]:
    """The probe's lines -> ({path: Probe}, {dir: entries, or None when not a dir})."""
    probes: dict[str, Probe] = {}
    listings: dict[str, list[str] | None] = {}
    for line in stdout.splitlines():
        parts = line.split("|")
        if parts[0] == "PROBE" and len(parts) >= 8:
            path, exists = parts[1], parts[2] == "1"
            if not exists:
                probes[path] = Probe(path, False)
                continue
            maj, _, mnr = parts[4].partition(":")
            try:
                major, minor, mode = int(maj, 16), int(mnr, 16), int(parts[5], 8)
            except ValueError:
                major = minor = mode = -1
            probes[path] = Probe(path, True, parts[3], major, minor, mode, parts[6].strip(),
                                 parts[7], parts[8] if len(parts) > 8 else "")
        elif parts[0] == "LS" and len(parts) >= 4:
            listings[parts[1]] = parts[3].split() if parts[2] == "1" else None
    return probes, listings


# ---------------------------------------------------------------------------------------------
# running


@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str
    stderr: str
    container_id: str
    left_behind: list[str]  # `runc list -q` right after `runc run` returned
    cgroup_left: bool  # the container's device cgroup dir still existed after `runc run`
    probes: dict[str, Probe]
    listings: dict[str, list[str] | None]
    probe_done: bool  # the probe ran to its end

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# Runs in a private mount namespace (`unshare -m`) set up for the cgroup mode: run, record
# what's left, then clean up regardless. v1 mode on a hybrid host mounts nothing.
_RUN_SCRIPT = r"""
R="$1"; B="$2"; ID="$3"; CG="$4"; OUT="$5"; MODE="$6"; RUNTIME="$7"
runc() { command "$RUNTIME" "$@"; }
mount --make-rprivate / || exit 96
if [ "$MODE" = v2 ]; then
  if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
    mount -t cgroup2 none /sys/fs/cgroup || exit 97
  fi
  CGDIR="/sys/fs/cgroup$CG"
else
  CGDIR="/sys/fs/cgroup/devices$CG"
fi
runc --root "$R" run -b "$B" "$ID" </dev/null
rc=$?
runc --root "$R" list -q > "$OUT/left" 2>&1
if [ -d "$CGDIR" ]; then echo 1 > "$OUT/cgroup"; else echo 0 > "$OUT/cgroup"; fi
runc --root "$R" delete -f "$ID" >/dev/null 2>&1
for c in /sys/fs/cgroup/*"$CG" /sys/fs/cgroup"$CG"; do [ -d "$c" ] && rmdir "$c" 2>/dev/null; done
exit $rc
"""


def run_container(bundle: Bundle, mode: str = "v1", *, container_id: str | None = None,
                  runc_root: Path | None = None, timeout: float = 60,
                  runtime: str = "runc") -> RunResult:
    """`runc run` the bundle in cgroup `mode` ("v1": the host's hybrid layout, devices
    controller; "v2": inside `unshare -m` with cgroup2 mounted at /sys/fs/cgroup), wait, then
    `runc delete -f` and remove its cgroup. Never raises for a failed container. `runtime`
    names another runc-compatible CLI (crun) to run instead."""
    if mode not in ("v1", "v2"):
        raise ValueError(f"mode must be v1 or v2, not {mode!r}")
    cid = container_id or f"gpuhook-e2e-{uuid.uuid4().hex[:12]}"
    out = bundle.path / f".run-{cid}"
    out.mkdir()
    root = runc_root or bundle.path / f".runc-{mode}"
    argv = ["unshare", "-m", "--propagation", "private", "bash", "-c", _RUN_SCRIPT, "run",
            str(root), str(bundle.path), cid, bundle.cgroups_path, str(out), mode, runtime]
    try:
        proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,
                              env=MINIMAL_ENV, stdin=subprocess.DEVNULL)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = 124
        stdout = _text(e.stdout)
        stderr = _text(e.stderr) + f"\n(timed out after {timeout}s)"
        _force_cleanup(root, cid, bundle.cgroups_path, out, mode, runtime)
    left = (out / "left").read_text().split() if (out / "left").exists() else [cid]
    cgroup_left = (out / "cgroup").read_text().strip() == "1" if (out / "cgroup").exists() \
        else True
    probes, listings = parse_probe(stdout)
    return RunResult(rc, stdout, stderr, cid, left, cgroup_left, probes, listings,
                     "PROBE-DONE" in stdout)


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode(errors="replace")


def _force_cleanup(root: Path, cid: str, cgroups_path: str, out: Path, mode: str,
                   runtime: str) -> None:
    # The same mount setup as _RUN_SCRIPT, with `runc delete -f` as the only work.
    script = _RUN_SCRIPT.replace('runc --root "$R" run -b "$B" "$ID" </dev/null', "false")
    argv = ["unshare", "-m", "--propagation", "private", "bash", "-c", script, "cleanup",
            str(root), "-", cid, cgroups_path, str(out), mode, runtime]
    subprocess.run(argv, capture_output=True, env=MINIMAL_ENV, timeout=60, check=False)


def read_log(path: Path) -> list[dict[str, Any]]:
    """gpuhook's JSON-lines decision log (empty when absent)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
