"""gpuhook-runtime as a process: the installed console script, with a small real "runtime"
(a shell script written here) standing in for runc. It records the argv it got, the shim's
environment marker and its ignored-signal mask, echoes stdin and exits 7."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakedriver.build import FakeHost
from tests.unit import specs

BIN = Path(sys.executable).parent
SHIM = BIN / "gpuhook-runtime"
GPUHOOK = BIN / "gpuhook"
MIG_UUID = "MIG-205e24ca-2066-514f-80c3-cb66869f6a1b"
FAKE_RUNTIME = """#!/bin/sh
d=@RECORD_DIR@
printf '%s\\n' "$0" "$@" > "$d/record.argv"
printf '%s' "${GPUHOOK_RUNTIME_SHIM-}" > "$d/record.marker"
grep '^SigIgn' /proc/$$/status > "$d/record.sigign"
pwd > "$d/record.cwd"
cat
exit 7
"""


@dataclass
class World:
    root: Path
    runtime: Path
    config: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "GPUHOOK_CONFIG": str(self.config),
                **extra}

    def shim(self, *args: str, cwd: Path | None = None, stdin: str = "",
             env: dict[str, str] | None = None, exe: Path = SHIM, importtime: bool = False,
             ) -> subprocess.CompletedProcess[str]:
        argv = [str(exe), *args]
        if importtime:
            # The launcher's -I ignores PYTHONPROFILEIMPORTTIME: its own first line (interpreter
            # and flags, as the kernel runs it) with -X importtime.
            argv = [*interpreter_line(exe), "-X", "importtime", *argv]
        return subprocess.run(argv, cwd=cwd or self.root, input=stdin, text=True,
                              capture_output=True, env=env or self.env(), timeout=60,
                              check=False)

    def argv(self) -> list[str] | None:
        rec = self.runtime.parent / "record.argv"
        return rec.read_text().splitlines() if rec.exists() else None

    def write_config(self, **keys: Any) -> None:
        base = {"inventory": specs.MIG8, "host-root": specs.MIG8_HOST,
                "log-file": str(self.log), "runtimes": [str(self.runtime)],
                "driver-files": False}
        base.update(keys)
        self.config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in base.items()))

    def bundle(self, spec: dict[str, Any], name: str = "bundle", text: str | None = None,
               ) -> Path:
        b = self.root / name
        b.mkdir()
        (b / "config.json").write_text(text if text is not None else json.dumps(spec))
        return b


def make_world(tmp_path: Path) -> World:
    """A recording fake runc and a valid config naming it (also the other shim tests' world)."""
    rt_dir = tmp_path / "rt"
    rt_dir.mkdir()
    runtime = rt_dir / "fake-runc"
    runtime.write_text(FAKE_RUNTIME.replace("@RECORD_DIR@", str(rt_dir)))
    runtime.chmod(0o755)
    w = World(tmp_path, runtime, tmp_path / "gpuhook.toml", tmp_path / "decisions.log")
    w.write_config()
    return w


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def gpu_spec(*ids: str) -> dict[str, Any]:
    s = specs.spec(ids=ids or ("3",))
    s["linux"] = {"resources": {"devices": [{"allow": False, "access": "rwm"}]}}
    return s


# ---- passthrough ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--root", "/run/r", "--log", "/run/l.json", "--log-format", "json", "state", "c1"],
    ["--root=/run/r", "delete", "--force", "c1"],
    ["kill", "c1", "9"],
    ["-root", "/r", "exec", "--process", "/p.json", "c1"],
    ["--systemd-cgroup", "start", "c1"],
    ["--version"],
    ["features"],
], ids=["state with containerd's global flags", "delete --force", "kill with a signal",
        "exec with single-dash global flags", "start", "--version", "a command gpuhook does "
        "not know"])
def test_other_commands_reach_the_runtime_unchanged(world: World, args: list[str]) -> None:
    result = world.shim(*args, stdin="to the runtime\n")
    assert result.returncode == 7, result.stderr
    assert world.argv() == [str(world.runtime), *args]
    assert result.stdout == "to the runtime\n"
    assert result.stderr == ""
    assert (world.runtime.parent / "record.marker").read_text() == "1"


def test_the_runtime_gets_default_sigpipe_and_sigxfsz(world: World) -> None:
    world.shim("state", "c1")
    mask = int((world.runtime.parent / "record.sigign").read_text().split()[1], 16)
    assert not mask & (1 << (13 - 1)), "SIGPIPE ignored in the runtime"
    assert not mask & (1 << (25 - 1)), "SIGXFSZ ignored in the runtime"


def test_a_broken_config_does_not_block_delete(world: World, tmp_path: Path) -> None:
    world.config.write_text("this is not toml = = =\n")
    fake_path = tmp_path / "path"
    fake_path.mkdir()
    (fake_path / "runc").symlink_to(world.runtime)
    result = world.shim("delete", "c1", env=world.env(PATH=str(fake_path)))
    assert result.returncode == 7
    assert world.argv() == [str(fake_path / "runc"), "delete", "c1"]


def test_runtimes_by_name_are_found_on_path_in_order(world: World, tmp_path: Path) -> None:
    path_dir = tmp_path / "bin"
    path_dir.mkdir()
    (path_dir / "crun").symlink_to(world.runtime)
    world.write_config(runtimes=["runc-not-here", "crun"])
    result = world.shim("state", "c1", env=world.env(PATH=f"/nonexistent:{path_dir}"))
    assert result.returncode == 7
    assert world.argv() == [str(path_dir / "crun"), "state", "c1"]


def test_no_runtime_found_names_what_was_tried(world: World) -> None:
    world.write_config(runtimes=["/nope/runc", "crun-absent"])
    result = world.shim("--log", str(world.root / "l.txt"), "state", "c1")
    assert result.returncode == 127
    assert "no real OCI runtime found: tried /nope/runc (not found), crun-absent (not found)" \
        in result.stderr
    assert world.argv() is None


# ---- recursion guard --------------------------------------------------------------------------

def test_a_runtime_that_is_the_shim_itself_is_skipped(world: World, tmp_path: Path) -> None:
    looped = tmp_path / "runc"
    looped.symlink_to(SHIM)
    world.write_config(runtimes=[str(looped), str(world.runtime)])
    result = world.shim("state", "c1")
    assert result.returncode == 7, result.stderr
    assert world.argv() == [str(world.runtime), "state", "c1"]


def test_only_the_shim_itself_is_an_error(world: World, tmp_path: Path) -> None:
    path_dir = tmp_path / "bin"
    path_dir.mkdir()
    (path_dir / "runc").symlink_to(SHIM)
    world.write_config(runtimes=["runc"])
    result = world.shim("state", "c1", env=world.env(PATH=str(path_dir)))
    assert result.returncode == 127
    assert f"{path_dir}/runc (is gpuhook-runtime itself)" in result.stderr


def test_a_copy_of_the_shim_stops_at_the_marker_instead_of_looping(
        world: World, tmp_path: Path) -> None:
    copy = tmp_path / "runc-copy"
    shutil.copy2(SHIM, copy)  # a different file: realpath cannot tell, the marker can
    world.write_config(runtimes=[str(copy)])
    result = world.shim("state", "c1")
    assert result.returncode == 126
    assert "called by itself (GPUHOOK_RUNTIME_SHIM is set)" in result.stderr
    assert result.stderr.count("gpuhook-runtime:") == 1


# ---- create / run: the spec -------------------------------------------------------------------

def test_create_without_gpu_request_leaves_the_spec_byte_identical(world: World) -> None:
    text = '{"ociVersion": "1.0.2",   "process": {"env": ["PATH=/bin", "X=é"], "args": ["sh"]},' \
           '\n "root": {"path": "rootfs"}, "mounts": [], "x-odd": 1.50}'
    b = world.bundle({}, text=text)
    before = os.stat(b / "config.json")
    result = world.shim("create", "-b", str(b), "c1")
    assert result.returncode == 7, result.stderr
    assert (b / "config.json").read_text() == text
    after = os.stat(b / "config.json")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert world.argv() == [str(world.runtime), "create", "-b", str(b), "c1"]


def test_unprivileged_envvar_request_is_passed_through_untouched(world: World) -> None:
    spec = specs.spec(env=("NVIDIA_VISIBLE_DEVICES=all",))
    b = world.bundle(spec)
    raw = (b / "config.json").read_bytes()
    assert world.shim("create", "--bundle", str(b), "c1").returncode == 7
    assert (b / "config.json").read_bytes() == raw
    [entry] = [json.loads(line) for line in world.log.read_text().splitlines()]
    assert entry["decision"] == "empty"


def dry_run(bundle: Path, config: Path) -> dict[str, Any]:
    out = subprocess.run([str(GPUHOOK), "dry-run", str(bundle), "--config", str(config),
                          "--json"], capture_output=True, text=True, check=True, timeout=60)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("ids", [("3",), ("3", MIG_UUID), ("1:0", "2")],
                         ids=["one GPU", "a GPU and a MIG device", "MIG by index and a GPU"])
def test_create_writes_exactly_the_plan_dry_run_shows(world: World, ids: tuple[str, ...]) -> None:
    b = world.bundle(gpu_spec(*ids))
    plan = dry_run(b, world.config)
    result = world.shim("--root", "/r", "create", "--bundle", str(b), "c1")
    assert result.returncode == 7, result.stderr
    spec = json.loads((b / "config.json").read_text())
    assert spec["linux"]["devices"] == [
        {"path": n["path"], "type": n["type"], "major": n["major"], "minor": n["minor"],
         "fileMode": n["file_mode"], "uid": 0, "gid": 0} for n in plan["device_nodes"]]
    assert spec["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}] + [
        {"allow": True, **r} for r in plan["cgroup_rules"]]
    assert world.argv() == [str(world.runtime), "--root", "/r", "create", "--bundle", str(b),
                            "c1"]


def test_create_keeps_file_mode_and_replaces_the_file_atomically(world: World) -> None:
    b = world.bundle(gpu_spec())
    (b / "config.json").chmod(0o600)
    before = os.stat(b / "config.json")
    assert world.shim("create", "-b", str(b), "c1").returncode == 7
    after = os.stat(b / "config.json")
    assert stat.S_IMODE(after.st_mode) == 0o600
    assert after.st_ino != before.st_ino  # renamed into place, not rewritten in place
    assert sorted(p.name for p in b.iterdir()) == ["config.json"]  # no temp file left


def test_create_twice_rewrites_nothing_the_second_time(world: World) -> None:
    b = world.bundle(gpu_spec("3", MIG_UUID))
    world.shim("create", "-b", str(b), "c1")
    once = os.stat(b / "config.json")
    raw = (b / "config.json").read_bytes()
    world.shim("create", "-b", str(b), "c1")
    assert (b / "config.json").read_bytes() == raw
    assert os.stat(b / "config.json").st_ino == once.st_ino


@pytest.mark.parametrize("form", [["-b", "{b}"], ["--bundle={b}"], ["-bundle", "{b}"], []],
                         ids=["-b X", "--bundle=X", "-bundle X", "no flag: the cwd"])
def test_run_finds_the_bundle_in_every_form(world: World, form: list[str]) -> None:
    b = world.bundle(gpu_spec())
    args = [a.format(b=b) for a in form]
    assert world.shim("run", *args, "c1", cwd=b).returncode == 7
    spec = json.loads((b / "config.json").read_text())
    assert any(d["path"] == "/dev/nvidia3" for d in spec["linux"]["devices"])


def test_relative_bundle_is_relative_to_the_cwd(world: World) -> None:
    b = world.bundle(gpu_spec())
    assert world.shim("create", "--bundle", "bundle", "c1", cwd=world.root).returncode == 7
    assert "devices" in json.loads((b / "config.json").read_text())["linux"]


def test_hook_mode_adds_the_hook_once(world: World) -> None:
    world.write_config(mode="hook")
    b = world.bundle(gpu_spec())
    for _ in range(2):
        assert world.shim("create", "-b", str(b), "c1").returncode == 7
    spec = json.loads((b / "config.json").read_text())
    assert spec["hooks"]["prestart"] == [{
        "path": str(GPUHOOK),
        "args": ["gpuhook", "hook", "prestart", "--config", str(world.config)],
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}]
    assert "devices" not in spec["linux"]


# ---- create: errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_refused_create_logs_one_line_and_never_runs_the_runtime(world: World,
                                                                   fmt: str) -> None:
    b = world.bundle(gpu_spec("99"))
    raw = (b / "config.json").read_bytes()
    log = world.root / f"runc-log.{fmt}"
    log.write_text("")  # runc's log already has lines: ours is appended
    result = world.shim("--log", str(log), "--log-format", fmt, "create", "-b", str(b), "c1")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("gpuhook-runtime: create c1: ")
    assert "99" in line
    assert world.argv() is None
    assert (b / "config.json").read_bytes() == raw
    [logged] = log.read_text().splitlines()
    if fmt == "json":
        entry = json.loads(logged)
        assert sorted(entry) == ["level", "msg", "time"]
        assert entry["level"] == "error"
        assert entry["msg"] == line
    else:
        assert logged.startswith('time="') and " level=error msg=" in logged
        assert json.loads(logged.split(" msg=", 1)[1]) == line
    [decision] = [json.loads(x) for x in world.log.read_text().splitlines()]
    assert (decision["event"], decision["id"], decision["decision"]) == ("create", "c1",
                                                                         "refused")


@pytest.mark.parametrize("content, exit_code, message", [
    (None, 2, "config.json: No such file or directory"),
    ('{"process": ', 2, "invalid JSON"),
    ('{"process": {"env": ["NVIDIA_VISIBLE_DEVICES=0"]}, "linux": []}', 2,
     "linux must be an object"),
], ids=["a bundle without config.json", "a spec that is not JSON",
        "a spec whose linux is not an object"])
def test_bad_bundles_fail_create(world: World, content: str | None, exit_code: int,
                                 message: str) -> None:
    b = world.root / "bundle"
    b.mkdir()
    if content is not None:
        spec = json.loads(content) if content.endswith("}") else None
        if spec is not None:
            spec["mounts"] = [{"destination": f"{specs.ROOT}/3", "source": "/dev/null"}]
            content = json.dumps(spec)
        (b / "config.json").write_text(content)
    result = world.shim("create", "-b", str(b), "c1")
    assert result.returncode == exit_code, result.stderr
    assert message in result.stderr
    assert world.argv() is None


# ---- cost -------------------------------------------------------------------------------------

def interpreter_line(launcher: Path) -> list[str]:
    """The interpreter and its flags from a launcher's `#!` line."""
    with launcher.open("rb") as f:
        first = f.readline().decode()
    assert first.startswith("#!"), first
    return first[2:].split()


def imported_modules(stderr: str) -> set[str]:
    """Module names from `python -X importtime` lines ("import time: self | cumulative | name")."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


@pytest.mark.parametrize("args", [["state", "c1"], ["create", "-b", "{b}", "c1"]],
                         ids=["a passthrough command", "create of a container with no request"])
def test_the_common_paths_import_no_click_yaml_or_nvml(world: World, args: list[str]) -> None:
    b = world.bundle(specs.spec())
    result = world.shim(*[a.format(b=b) for a in args],
                        importtime=True)
    assert result.returncode == 7
    modules = imported_modules(result.stderr)
    assert "gpuhook.runtime.shim" in modules
    assert not modules & {"click", "yaml", "pynvml", "tomlkit", "gpuhook.runtime.pipeline"}


def test_a_number_json_cannot_write_back_fails_create_cleanly(world: World) -> None:
    spec = gpu_spec()
    text = json.dumps(spec)[:-1] + ', "x-huge": 1e400}'
    b = world.bundle(spec, text=text)
    result = world.shim("create", "-b", str(b), "c1")
    assert result.returncode == 2
    assert "out of JSON's range" in result.stderr
    assert (b / "config.json").read_text() == text
    assert world.argv() is None


def test_hook_mode_names_a_relative_gpuhook_config_absolutely(world: World) -> None:
    world.write_config(mode="hook")
    b = world.bundle(gpu_spec())
    env = world.env(GPUHOOK_CONFIG=world.config.name)  # relative to the cwd
    assert world.shim("create", "-b", str(b), "c1", env=env).returncode == 7
    [hook] = json.loads((b / "config.json").read_text())["hooks"]["prestart"]
    assert hook["args"][3:] == ["--config", str(world.config)]


# ---- spec mode with driver files (the fake driver, tests/fakedriver) ------------------------

def _driver_world(world: World, host: FakeHost, rootfs_dirs: tuple[str, ...]) -> Path:
    world.write_config(**{"inventory": str(host.inventory), "host-root": str(host.root),
                          "driver-files": True})
    s = specs.spec(ids=("0",), env=["NVIDIA_DRIVER_CAPABILITIES=compute,utility"])
    b = world.bundle(s)
    for d in rootfs_dirs:
        (b / "rootfs" / d).mkdir(parents=True)
    return b


@pytest.mark.parametrize(("dirs", "libdir"), [
    (("usr/lib/x86_64-linux-gnu",), "/usr/lib/x86_64-linux-gnu"),
    (("usr/lib64",), "/usr/lib64"),
], ids=["a_debian_rootfs_gets_the_multiarch_dir", "another_rootfs_gets_lib64"])
def test_spec_mode_writes_driver_mounts_and_the_create_container_hook(
        world: World, fake_driver_host: FakeHost, dirs: tuple[str, ...], libdir: str) -> None:
    b = _driver_world(world, fake_driver_host, dirs)
    plan = dry_run(b, world.config)
    result = world.shim("create", "--bundle", str(b), "c1")
    assert result.returncode == 7, result.stderr
    spec = json.loads((b / "config.json").read_text())
    ours = [m for m in spec["mounts"] if m["source"].startswith(str(fake_driver_host.root))]
    want = []
    for f in plan["driver_files"]:
        where = (f"{libdir}/{f['container_path']}" if f["kind"] == "library"
                 else f["container_path"])
        want.append({"destination": where, "type": "bind", "source": f["host_path"],
                     "options": f["options"]})
    assert ours == want
    ver = fake_driver_host.version
    assert {"destination": f"{libdir}/libcuda.so.{ver}", "type": "bind",
            "source": str(fake_driver_host.lib64 / f"libcuda.so.{ver}"),
            "options": ["bind", "ro", "nosuid", "nodev"]} in ours
    [hook] = spec["hooks"]["createContainer"]
    assert hook["path"] == str(GPUHOOK)
    assert hook["args"][:5] == ["gpuhook", "hook", "create-container", "--config",
                                str(world.config)]
    # an explicit env, so runc does not hand the hook the container's (CVE-2025-23266)
    assert hook["env"] == ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" not in hook["env"]


def test_spec_mode_twice_writes_one_hook_and_each_mount_once(
        world: World, fake_driver_host: FakeHost) -> None:
    b = _driver_world(world, fake_driver_host, ("usr/lib/x86_64-linux-gnu",))
    world.shim("create", "-b", str(b), "c1")
    raw = (b / "config.json").read_bytes()
    world.shim("create", "-b", str(b), "c1")
    assert (b / "config.json").read_bytes() == raw
    spec = json.loads(raw)
    assert len(spec["hooks"]["createContainer"]) == 1
    dests = [m["destination"] for m in spec["mounts"]]
    assert len(dests) == len(set(dests))


def test_spec_mode_refuses_a_rootfs_whose_lib_dir_is_a_symlink(
        world: World, fake_driver_host: FakeHost, tmp_path: Path) -> None:
    b = _driver_world(world, fake_driver_host, ("usr/lib",))
    (b / "rootfs/usr/lib/x86_64-linux-gnu").symlink_to(tmp_path)
    (b / "rootfs/etc").mkdir()
    (b / "rootfs/etc/debian_version").write_text("12.5\n")
    before = (b / "config.json").read_bytes()
    result = world.shim("create", "-b", str(b), "c1")
    assert result.returncode != 0 and world.argv() is None
    assert "/usr/lib/x86_64-linux-gnu is a symlink" in result.stderr
    assert (b / "config.json").read_bytes() == before
