"""The Debian package (issue 7): built offline from a copy of the source tree with apt's tooling
only, installed with dpkg, used from Debian's own python3 with no venv anywhere near, removed and
purged without a trace.

One build + install per module (the `deb` fixture); its finalizer purges the package whatever
happened, so a failed test never leaves gpuhook installed on the machine. The tests run in file
order: the last one removes and purges and compares the file list with the snapshot taken before
`dpkg -i`.

The snapshot covers what a package and its maintainer scripts can touch: /usr, /etc, /var/log,
/var/lib/gpuhook and dpkg's own per-package files in /var/lib/dpkg/info (the rest of
/var/lib/dpkg, e.g. `status`, changes by design). Two run-time paths are checked on their own
instead, because the maintainer scripts delete them by policy even when they existed before:
the decision log /var/log/gpuhook.log* (purge) and the inventory snapshot dir /run/gpuhook
(remove). Their earlier contents are put back afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import runc_harness as rh

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PKG = "gpuhook"
# A clean system-Python context: Debian's tools only, no venv, no PYTHON* variables.
SYSTEM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
GPUHOOK = "/usr/bin/gpuhook"
DIST = Path("/usr/lib/python3/dist-packages")
INSTALLED_FAKE = DIST / "gpuhook" / "fake"
CONFFILE = "/etc/gpuhook/config.toml"
LOGROTATE = "/etc/logrotate.d/gpuhook"
PACKAGED_HOOK = "/usr/share/containers/oci/hooks.d/gpuhook.json"  # not shipped any more
EXPECTED_FILES = (
    "/usr/bin/gpuhook",
    "/usr/bin/gpuhook-runtime",
    CONFFILE,
    LOGROTATE,
    "/usr/lib/gpuhook/vendor/pynvml.py",
    "/usr/share/man/man1/gpuhook.1.gz",
    "/usr/share/man/man1/gpuhook-runtime.1.gz",
    "/usr/share/bash-completion/completions/gpuhook",
    "/usr/share/doc/gpuhook/copyright",
    "/usr/share/doc/gpuhook/examples/config.toml",
    "/usr/share/doc/gpuhook/examples/bundle/config.json",
    str(DIST / "gpuhook" / "py.typed"),
    str(INSTALLED_FAKE / "inventories" / "8xa100-mig.yaml"),
    str(INSTALLED_FAKE / "hosts" / "8xa100-mig" / "proc" / "devices"),
)
SNAPSHOT_ROOTS = ("/usr", "/etc", "/var/log", "/var/lib/gpuhook", "/var/lib/dpkg/info")
POLICY_LOG = Path("/var/log/gpuhook.log")
RUN_DIR = Path("/run/gpuhook")  # the default inventory-cache's directory
BUILD_DEPS = ("dpkg-buildpackage", "dh", "dh_python3", "lintian", "git")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (dpkg -i)"
    for tool in BUILD_DEPS:
        if shutil.which(tool, path=SYSTEM_ENV["PATH"]) is None:
            return f"{tool} is not installed (scripts/setup installs the build dependencies)"
    if not (REPO / ".git").exists():
        return "needs a git checkout (scripts/build-deb copies the tracked files)"
    return None


def sysrun(args: Sequence[str], *, input: str | None = None, cwd: Path | str | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), env=SYSTEM_ENV, capture_output=True, text=True,
                          input=input, cwd=cwd, timeout=timeout, check=False,
                          stdin=None if input is not None else subprocess.DEVNULL)


def dpkg(*args: str) -> subprocess.CompletedProcess[str]:
    """dpkg, retried while another dpkg/apt holds the lock (other suites may install too)."""
    for _ in range(60):
        proc = sysrun(["dpkg", *args], timeout=300)
        if proc.returncode == 0 or "lock" not in proc.stderr:
            return proc
        time.sleep(2)
    return proc


def installed_status() -> str:
    proc = sysrun(["dpkg-query", "-W", "-f=${Status}", PKG])
    return proc.stdout.strip() if proc.returncode == 0 else "not-installed"


def snapshot() -> set[str]:
    """Every path under SNAPSHOT_ROOTS (symlinks not followed), minus the policy-deleted log."""
    paths: set[str] = set()
    for root in SNAPSHOT_ROOTS:
        for dirpath, dirnames, filenames in os.walk(root):
            paths.add(dirpath)
            paths.update(os.path.join(dirpath, n) for n in (*dirnames, *filenames))
    return {p for p in paths if not p.startswith(str(POLICY_LOG))}


def packages() -> set[str]:
    out = sysrun(["dpkg-query", "-W", "-f=${Package}\\n"]).stdout
    return set(out.split())


@dataclass
class Deb:
    path: Path
    version: str
    lintian: str
    build_seconds: float
    before: set[str]
    packages_before: set[str]
    log_before: bytes | None = None
    run_dir_copy: Path | None = None  # a copy of /run/gpuhook as it was before the install
    install_output: str = ""  # what dpkg -i (the postinst) printed


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deb]:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    if installed_status() != "not-installed":
        assert dpkg("--purge", PKG).returncode == 0, "could not purge an earlier gpuhook"
    out = tmp_path_factory.mktemp("deb-out")
    start = time.monotonic()
    build = sysrun([str(REPO / "scripts" / "build-deb"), "--out", str(out), "--lintian"],
                   timeout=600)
    build_seconds = time.monotonic() - start
    assert build.returncode == 0, f"scripts/build-deb failed:\n{build.stdout}\n{build.stderr}"
    path = Path(build.stdout.strip().splitlines()[-1])
    version = sysrun(["dpkg-deb", "-f", str(path), "Version"]).stdout.strip()
    lintian = "\n".join(line for line in (build.stdout + build.stderr).splitlines()
                        if line[:2] in ("E:", "W:", "I:", "N:", "P:", "X:", "O:", "M:"))
    (REPO / "packaging" / "deb" / "out").mkdir(parents=True, exist_ok=True)
    (REPO / "packaging" / "deb" / "out" / "lintian.txt").write_text(lintian + "\n")
    log_before = POLICY_LOG.read_bytes() if POLICY_LOG.exists() else None
    run_dir_copy = None
    if RUN_DIR.exists():
        run_dir_copy = tmp_path_factory.mktemp("run-gpuhook") / "gpuhook"
        shutil.copytree(RUN_DIR, run_dir_copy, symlinks=True)
    info = Deb(path, version, lintian, build_seconds, snapshot(), packages(),
               log_before=log_before, run_dir_copy=run_dir_copy)
    try:
        proc = dpkg("-i", str(path))
        info.install_output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            # Only a missing dependency may fail dpkg -i; apt brings it from Debian.
            fix = sysrun(["apt-get", "install", "-f", "-y", "--no-install-recommends"],
                         timeout=600)
            assert fix.returncode == 0, f"dpkg -i:\n{proc.stderr}\napt-get -f:\n{fix.stderr}"
            info.install_output += fix.stdout + fix.stderr
        assert installed_status() == "install ok installed"
        yield info
    finally:
        if installed_status() != "not-installed":
            dpkg("--purge", PKG)
        if log_before is not None and not POLICY_LOG.exists():
            POLICY_LOG.write_bytes(log_before)
        if run_dir_copy is not None and not RUN_DIR.exists():
            shutil.copytree(run_dir_copy, RUN_DIR, symlinks=True)


def test_package_is_lintian_clean(deb: Deb) -> None:
    errors = [line for line in deb.lintian.splitlines() if line.startswith("E:")]
    assert errors == [], deb.lintian
    print(f"\nbuild {deb.build_seconds:.1f} s; lintian:\n{deb.lintian or '(no tags)'}")


def test_installs_the_promised_files_and_keeps_the_config_as_conffile(deb: Deb) -> None:
    listed = set(sysrun(["dpkg", "-L", PKG]).stdout.split("\n"))
    assert [f for f in EXPECTED_FILES if f not in listed or not os.path.exists(f)] == []
    # The snapshot sees them (so the purge comparison at the end can see them go).
    assert sorted(set(EXPECTED_FILES) - (snapshot() - deb.before)) == []
    conffiles = sysrun(["dpkg-query", "-W", "-f=${Conffiles}", PKG]).stdout.split()
    assert CONFFILE in conffiles and LOGROTATE in conffiles
    assert Path(CONFFILE).read_bytes() == (REPO / "config" / "config.toml").read_bytes()
    rotate = Path(LOGROTATE).read_text()
    assert "/var/log/gpuhook.log {" in rotate and "nocreate" in rotate
    # Registered with no engine by the package itself: podman and CRI-O read this directory
    # on every container start, so a shipped file would register gpuhook at `dpkg -i`.
    assert PACKAGED_HOOK not in listed and not os.path.exists(PACKAGED_HOOK)
    assert "registered with no container engine" in deb.install_output
    assert "gpuhook install --runtime podman" in deb.install_output
    depends = sysrun(["dpkg-query", "-W", "-f=${Depends}", PKG]).stdout
    assert "nvidia" not in depends  # vendored, not a dependency Debian can't satisfy
    for dep in ("python3-click", "python3-yaml", "python3-prctl", "python3-tomlkit"):
        assert dep in depends


def test_version_from_system_python(deb: Deb) -> None:
    proc = sysrun([GPUHOOK, "--version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"gpuhook, version {deb.version.split('-')[0]}"
    where = sysrun(["python3", "-I", "-c", "import gpuhook; print(gpuhook.__file__)"])
    assert where.stdout.strip() == str(DIST / "gpuhook" / "__init__.py"), where.stderr


@pytest.mark.parametrize(("words", "expected"), [
    (["gpuhook", "dr"], "dry-run"),
    (["gpuhook", "dry-run", "--js"], "--json"),
    (["gpuhook", "inventory", "ref"], "refresh"),
], ids=["a command name", "an option of dry-run", "a subcommand of inventory"])
def test_bash_completion_completes(deb: Deb, words: list[str], expected: str) -> None:
    script = ('source /usr/share/bash-completion/completions/gpuhook\n'
              'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))\n'
              '_gpuhook_completion gpuhook; printf "%s\\n" "${COMPREPLY[@]}"\n')
    proc = sysrun(["bash", "-c", script, "complete", *words])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [expected]


def test_installed_runtime_shim_passes_through_to_runc(deb: Deb) -> None:
    proc = sysrun(["/usr/bin/gpuhook-runtime", "--version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("runc version")


def test_vendored_nvml_bindings_load_and_report_the_missing_driver(deb: Deb) -> None:
    # No NVIDIA driver here: pynvml must import (vendored) and fail at nvmlInit, naming the lib.
    proc = sysrun([GPUHOOK, "dry-run", str(REPO / "examples" / "bundle"), "--inventory", "nvml",
                   "--host-root", str(INSTALLED_FAKE / "hosts" / "8xa100-mig")])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cannot import pynvml" not in proc.stderr
    assert "libnvidia-ml" in proc.stderr


@pytest.mark.parametrize("args", [
    pytest.param(["examples/bundle", "--config", "examples/config.toml"],
                 id="the repository example and its config"),
    pytest.param(["/usr/share/doc/gpuhook/examples/bundle", "--config",
                  "/usr/share/doc/gpuhook/examples/config.toml"],
                 id="the example installed as documentation"),
    pytest.param(["examples/bundle", "--config", "/usr/share/doc/gpuhook/examples/config.toml",
                  "--inventory",
                  str(INSTALLED_FAKE / "inventories" / "8xa100-mig.yaml"),
                  "--host-root", str(INSTALLED_FAKE / "hosts" / "8xa100-mig")],
                 id="the fake data installed with the package"),
])
def test_dry_run_on_the_shipped_example(deb: Deb, args: list[str]) -> None:
    proc = sysrun([GPUHOOK, "dry-run", *args, "--json"], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["source"] == "volume-mounts"
    assert sorted(d["index"] for d in plan["devices"]) == ["1:0", "3"]


def test_installed_hook_enforces_in_a_runc_container(
        deb: Deb, runc_rootfs: Path, cgroup_mode: str, tmp_path: Path) -> None:
    """Unprivileged, GPU 1 requested by the device plugin's mount, NVIDIA_VISIBLE_DEVICES=all
    set: /dev/nvidia1 is there and allowed (ENXIO: no driver), no other GPU exists."""
    log = tmp_path / "log.jsonl"
    cfg = rh.write_config(tmp_path / "gpuhook.toml", fake="8xa100-mig", log_file=log,
                          fake_root=INSTALLED_FAKE)
    bundle = rh.make_bundle(tmp_path / "bundle", runc_rootfs, rh.BundleOptions(
        request_ids=("3",), env=("NVIDIA_VISIBLE_DEVICES=all",),
        args=rh.probe_args(["/dev/nvidia3", "/dev/nvidiactl", "/dev/nvidia0", "/dev/null"]),
        hook=rh.hook_command(cfg, hook_path=GPUHOOK)))
    result = rh.run_container(bundle, cgroup_mode)
    assert result.ok, result.stderr
    assert result.probe_done, result.stdout
    assert result.probes["/dev/nvidia3"].is_char
    assert result.probes["/dev/nvidia3"].read == "ENXIO"
    assert result.probes["/dev/nvidiactl"].read == "ENXIO"
    assert not result.probes["/dev/nvidia0"].exists
    assert result.probes["/dev/null"].read == "OK"
    listing = result.listings["/dev"] or []
    assert sorted(n for n in listing if n.startswith("nvidia") and n[6:].isdigit()) == ["nvidia3"]
    assert rh.read_log(log), "the installed hook wrote no decision log line"
    assert result.left_behind == []


def test_install_containerd_dry_run_changes_nothing(deb: Deb, tmp_path: Path) -> None:
    config = tmp_path / "containerd.toml"
    default = sysrun(["containerd", "config", "default"])
    assert default.returncode == 0, default.stderr
    config.write_text(default.stdout)
    proc = sysrun([GPUHOOK, "install", "--runtime", "containerd", "--dry-run",
                   "--engine-config", str(config)])
    assert proc.returncode == 0, proc.stderr
    assert '"/usr/bin/gpuhook-runtime"' in proc.stdout  # found next to the installed gpuhook
    assert config.read_text() == default.stdout


def test_install_for_podman_writes_the_hooks_d_file_the_package_does_not_ship(
        deb: Deb) -> None:
    """The operator's step registers podman / CRI-O: a new file running the installed gpuhook
    (dry run: nothing is written)."""
    proc = sysrun([GPUHOOK, "install", "--runtime", "podman", "--dry-run", "--create-dirs"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"--- /dev/null\n+++ {PACKAGED_HOOK}\n"), proc.stdout
    assert f'"path": "{GPUHOOK}"' in proc.stdout
    assert "nothing to restart" in proc.stdout
    assert not os.path.exists(PACKAGED_HOOK)


def _time_runs(argv: Sequence[str], stdin: bytes, env: dict[str, str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(list(argv), input=stdin, env=env, capture_output=True, check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def measure_no_gpu_start(hooks: dict[str, Sequence[str]], bundle: Path, n: int = 30,
                         ) -> dict[str, dict[str, float]]:
    """Interleaved wall times (ms) of `hook prestart` for a container without a GPU request, per
    hook command line; also `python -c pass` of Debian's interpreter as the floor."""
    state = json.dumps({"ociVersion": "1.0.2", "id": "bench", "pid": os.getpid(),
                        "bundle": str(bundle), "status": "creating"}).encode()
    runs: dict[str, list[float]] = {name: [] for name in hooks}
    for _ in range(n):
        for name, argv in hooks.items():
            runs[name] += _time_runs(argv, state, SYSTEM_ENV, 1)
    return {name: {"min": min(v), "median": statistics.median(v),
                   "p95": sorted(v)[int(0.95 * (len(v) - 1))]} for name, v in runs.items()}


def test_measure_no_gpu_hook_start_installed_vs_venv(deb: Deb, tmp_path: Path) -> None:
    """A measurement, not an assertion: the installed hook vs the venv's, no-request container."""
    venv_hook = REPO / ".venv" / "bin" / "gpuhook"
    if not venv_hook.exists():
        pytest.skip("no .venv (scripts/setup makes it)")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec = rh.runc_spec()
    spec["process"]["env"] = ["PATH=/usr/bin:/bin"]
    (bundle / "config.json").write_text(json.dumps(spec))
    hooks: dict[str, Sequence[str]] = {
        "python3 -c pass (Debian)": ["/usr/bin/python3", "-c", "pass"],
        "installed /usr/bin/gpuhook": [GPUHOOK, "hook", "prestart"],
        "venv .venv/bin/gpuhook": [str(venv_hook), "hook", "prestart"],
    }
    figures = measure_no_gpu_start(hooks, bundle)
    report = {"n": 30, "ms": figures}
    out = REPO / "packaging" / "deb" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "hook-start.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\nno-GPU hook start, ms (min / median / p95):")
    for name, f in figures.items():
        print(f"  {name:28s} {f['min']:6.1f} {f['median']:6.1f} {f['p95']:6.1f}")


# Last: it removes the package the tests above use.
# Registrations as `gpuhook install --drop-in` would leave them, in drop-in directories that the
# daemons read only when imported (containerd) or when running (CRI-O is not installed here).
REGISTRATIONS = (
    ("containerd", Path("/etc/containerd/conf.d"), ".toml",
     '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]\n'
     'BinaryName = "/usr/bin/gpuhook-runtime"\n'),
    ("crio", Path("/etc/crio/crio.conf.d"), ".conf",
     '[crio.runtime.runtimes.nvidia]\nruntime_path = "/usr/bin/gpuhook-runtime"\n'),
)


def test_remove_warns_about_a_registered_runtime_then_purge_leaves_no_trace(
        deb: Deb, tmp_path: Path) -> None:
    # prerm must name every file that still registers gpuhook-runtime, and touch none of them.
    made: list[Path] = []
    files: dict[Path, tuple[str, str]] = {}
    for runtime, directory, suffix, text in REGISTRATIONS:
        for d in (*reversed(directory.parents), directory):
            if not d.exists():
                d.mkdir()
                made.append(d)
        f = directory / f"99-gpuhook-deb-test-{uuid.uuid4().hex[:8]}{suffix}"
        f.write_text(text)
        files[f] = (runtime, text)
    POLICY_LOG.write_text('{"event": "prestart", "decision": "test"}\n')
    cfg = rh.write_config(tmp_path / "gpuhook.toml", log_file=tmp_path / "log.jsonl",
                          fake_root=INSTALLED_FAKE)
    refresh = sysrun([GPUHOOK, "inventory", "refresh", "--config", str(cfg)])
    assert refresh.returncode == 0, refresh.stderr
    assert (RUN_DIR / "inventory.json").is_file()
    try:
        removed = dpkg("-r", PKG)
        assert removed.returncode == 0, removed.stderr
        for f, (runtime, text) in files.items():
            assert f"{f}  ({runtime})" in removed.stderr
            assert f.read_text() == text
        assert "gpuhook uninstall --runtime RUNTIME" in removed.stderr
    finally:
        for f in files:
            f.unlink()
        for d in reversed(made):
            d.rmdir()
    assert installed_status() == "deinstall ok config-files"
    assert not os.path.exists(GPUHOOK)
    assert os.path.exists(CONFFILE)  # remove keeps configuration
    assert POLICY_LOG.exists()  # and logs
    assert not RUN_DIR.exists()  # but not the inventory snapshot of a program that is gone

    purged = dpkg("-P", PKG)
    assert purged.returncode == 0, purged.stderr
    assert installed_status() == "not-installed"
    assert not POLICY_LOG.exists()
    if deb.log_before is not None:
        POLICY_LOG.write_bytes(deb.log_before)
    if deb.run_dir_copy is not None:
        shutil.copytree(deb.run_dir_copy, RUN_DIR, symlinks=True)
    # Packages other than gpuhook installed or removed meanwhile (dependencies from apt-get -f,
    # or another suite's apt-get on a shared machine) are not gpuhook's doing: leave them out.
    others = packages() ^ deb.packages_before
    theirs = {f for p in others for f in sysrun(["dpkg", "-L", p]).stdout.split("\n")}
    info = tuple(f"/var/lib/dpkg/info/{p}" for p in others)
    after = {f for f in snapshot() - theirs if not f.startswith(info)}
    before = {f for f in deb.before - theirs if not f.startswith(info)}
    assert sorted(after - before) == [], "left behind after purge"
    assert sorted(before - after) == [], "removed by install + purge"
