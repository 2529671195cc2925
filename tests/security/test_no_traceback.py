"""Class 6: no traceback and no hang, for any input, in the hook, the shim and dry-run. Each
input is run through the installed executables (as runc, containerd and an operator run them):
exit 1 or 2 and one clear line, within a timeout that a blocking open would overrun."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.security import entry as e

HUGE = "9" * 5000  # past sys.get_int_max_str_digits() (4300)
REQUEST = {"ids": ("0:0",)}

# config.json contents: bytes, as an attacker (or a broken engine) would leave them.
SPECS: list[tuple[str, bytes]] = [
    ("an integer past the digit limit",
     b'{"ociVersion":"1.0.2","process":{"env":["NVIDIA_VISIBLE_DEVICES=0"],'
     b'"user":{"uid":' + HUGE.encode() + b'}}}'),
    ("an integer past the digit limit in a mount list",
     json.dumps(e.spec(ids=("0:0",)))[:-1].encode() + b',"x":-' + HUGE.encode() + b'}'),
    ("a lone surrogate in an id",
     json.dumps(e.spec(ids=("\ud800",))).encode()),
    ("a lone surrogate in an env key and value",
     json.dumps(e.spec(env=["NVIDIA_VISIBLE_DEVICES=\udc80", "\ud800=x"],
                       privileged=True)).encode()),
    ("non-UTF-8 bytes",
     b'{"process":{"env":["NVIDIA_VISIBLE_DEVICES=\xff\xfe"]},"mounts":[]}'),
    ("nesting deep enough to exhaust recursion",
     b'{"process":{"env":["NVIDIA_VISIBLE_DEVICES=0"]},"x":' + b"[" * 200000
     + b"]" * 200000 + b"}"),
    ("an unterminated deep nesting",
     b'{"process":{"env":["NVIDIA_VISIBLE_DEVICES=0"]},"x":' + b"{\"a\":" * 100000),
    ("an id ending in a newline",
     json.dumps(e.spec(ids=("0:0\n",))).encode()),
    ("a control character in a requirement",
     json.dumps(e.spec(env=["NVIDIA_REQUIRE_CUDA=cuda>=99.0\x1b[2J\x07"],
                       ids=("0:0",))).encode()),
    ("NaN where a number goes, with a request",
     b'{"process":{"env":[]},"user":{"uid":NaN},"mounts":[{"destination":'
     b'"/var/run/nvidia-container-devices/9","source":"/dev/null"}]}'),
    ("a spec that is a bare string", b'"NVIDIA_VISIBLE_DEVICES=all"'),
    ("linux.namespaces that is not a list",
     json.dumps({**e.spec(ids=("0:0",)), "linux": {"namespaces": {"type": "user"}}}).encode()),
]

ENTRY_POINTS = ["hook", "shim", "dry-run"]


def run_entry(which: str, tmp_path: Path, bundle: Path, config: Path) -> e.Run:
    if which == "hook":
        return e.run_process(e.hook_argv(config), stdin=e.state_for(bundle))
    if which == "shim":
        return e.run_process(e.shim_argv(bundle), env={**e.ENV, "GPUHOOK_CONFIG": str(config)})
    return e.run_process(e.dry_run_argv(bundle, config))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return e.write_config(tmp_path / "gpuhook.toml", tmp_path / "gpuhook.log")


@pytest.mark.parametrize("which", ENTRY_POINTS)
@pytest.mark.parametrize("content", [c for _, c in SPECS], ids=[n for n, _ in SPECS])
def test_a_hostile_spec_gets_one_line_and_exit_1_or_2(
        tmp_path: Path, config: Path, which: str, content: bytes) -> None:
    bundle = e.bundle_with(tmp_path, content)
    run = run_entry(which, tmp_path, bundle, config)
    e.assert_clean_exit(run, allowed=(1, 2))


@pytest.mark.parametrize("which", ENTRY_POINTS)
def test_non_ascii_digits_in_the_legacy_cuda_version_refuse_with_one_line(
        tmp_path: Path, config: Path, which: str) -> None:
    # int("\u0663") is 3 and int("\u00b2") raises: neither may decide a requirement. A legacy
    # image's CUDA_VERSION that is not a version refuses the request it would add a requirement
    # to (as the toolkit does, docs/compatibility.md), with one line.
    s = e.spec(env=["CUDA_VERSION=\u00b2.\u0663"], privileged=True)
    bundle = e.bundle_with(tmp_path, s)
    run = (e.run_process(e.dry_run_argv(bundle, config)) if which == "dry-run"
           else run_entry(which, tmp_path, bundle, config))
    e.assert_clean_exit(run, allowed=(2,))
    assert "is not a version" in e.assert_one_line(run.stderr)


@pytest.mark.parametrize("which", ENTRY_POINTS)
def test_a_lone_surrogate_elsewhere_in_a_granted_spec_is_written_back_escaped(
        tmp_path: Path, config: Path, which: str) -> None:
    s = e.spec(env=["FOO=\ud800"], ids=("0:0",))
    bundle = e.bundle_with(tmp_path, s)
    run = run_entry(which, tmp_path, bundle, config)
    if which == "hook":  # DEAD_PID: the plan is made, the apply step cannot find the process
        e.assert_clean_exit(run, allowed=(1,))
        return
    e.assert_clean_exit(run, allowed=(0,))
    if which == "shim":
        edited = json.loads((bundle / "config.json").read_bytes())
        assert "FOO=\ud800" in edited["process"]["env"]
        assert any(d["path"] == "/dev/nvidia0" for d in edited["linux"]["devices"])


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _zero(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero: bytes without end


def _directory(path: Path) -> None:
    path.mkdir()


KINDS: list[tuple[str, Callable[[Path], None]]] = [
    ("a FIFO", _fifo), ("a character device (/dev/zero)", _zero), ("a directory", _directory)]
PLACES = ["config.json", "the config", "the inventory", "the inventory snapshot"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
@pytest.mark.parametrize("which", ENTRY_POINTS)
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("make", [k for _, k in KINDS], ids=[n for n, _ in KINDS])
def test_a_fifo_or_device_in_place_of_a_file_is_refused_without_hanging(
        tmp_path: Path, which: str, place: str, make: Callable[[Path], None]) -> None:
    log = tmp_path / "gpuhook.log"
    inventory = tmp_path / "inventory.yaml"
    snapshot = tmp_path / "snapshot.json"
    shutil.copy(e.MIG8, inventory)
    config = tmp_path / "gpuhook.toml"
    e.write_config(config, log, inventory=str(inventory), **{"inventory-cache": str(snapshot)})
    bundle = e.bundle_with(tmp_path, e.spec(**REQUEST))  # type: ignore[arg-type]
    target = {"config.json": bundle / "config.json", "the config": config,
              "the inventory": inventory, "the inventory snapshot": snapshot}[place]
    target.unlink(missing_ok=True)
    make(target)
    run = run_entry(which, tmp_path, bundle, config)
    if place == "the inventory snapshot":
        # A snapshot that is not a regular file is not trusted: the inventory is read instead.
        expect: tuple[int, ...] = (1,) if which == "hook" else (0,)
        e.assert_clean_exit(run, allowed=expect)
        return
    e.assert_clean_exit(run, allowed=(2,))
    assert b"not a regular file" in run.stderr or b"Is a directory" in run.stderr, \
        run.describe()


HOST_FILES: list[tuple[str, str, str, bytes]] = [
    ("a superscript digit as the nvidia-uvm major", "proc/devices", "510 nvidia-uvm",
     "\u00b2\u00b9\u2070 nvidia-uvm".encode()),
    ("Arabic-Indic digits as the nvidia-uvm major", "proc/devices", "510 nvidia-uvm",
     "\u0665\u0661\u0660 nvidia-uvm".encode()),
    ("an integer past the digit limit as the nvidia-uvm major", "proc/devices",
     "510 nvidia-uvm", HUGE.encode() + b" nvidia-uvm"),
    ("a superscript digit as a MIG minor", "proc/driver/nvidia-caps/mig-minors",
     "gpu0/gi1/access 12", "gpu0/gi1/access \u00b9\u00b2".encode()),
]


@pytest.mark.parametrize("which", ENTRY_POINTS)
@pytest.mark.parametrize(("rel", "old", "new"), [h[1:] for h in HOST_FILES],
                         ids=[h[0] for h in HOST_FILES])
def test_non_ascii_digits_in_host_files_are_a_host_error_not_a_number(
        tmp_path: Path, which: str, rel: str, old: str, new: bytes) -> None:
    host = tmp_path / "host"
    shutil.copytree(e.MIG8_HOST, host)
    path = host / rel
    text = path.read_bytes()
    assert old.encode() in text, f"fixture drift: {old!r} not in {path}"
    path.write_bytes(text.replace(old.encode(), new))
    config = e.write_config(tmp_path / "gpuhook.toml", tmp_path / "gpuhook.log",
                            **{"host-root": str(host)})
    bundle = e.bundle_with(tmp_path, e.spec(ids=("0:0",)))
    run = run_entry(which, tmp_path, bundle, config)
    e.assert_clean_exit(run, allowed=(1,))
    assert rel.encode() in run.stderr, run.describe()


CONFIGS: list[tuple[str, bytes]] = [
    ("an integer past the digit limit", b"x = " + HUGE.encode() + b"\n"),
    ("nesting deep enough to exhaust recursion", b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n"),
    ("non-UTF-8 bytes", b'log-file = "\xff"\n'),
    ("a relative runtime path", b'runtimes = ["./runc"]\n'),
]


@pytest.mark.parametrize("which", ENTRY_POINTS)
@pytest.mark.parametrize("content", [c for _, c in CONFIGS], ids=[n for n, _ in CONFIGS])
def test_a_hostile_config_gets_one_line_and_exit_2(
        tmp_path: Path, which: str, content: bytes) -> None:
    config = tmp_path / "gpuhook.toml"
    config.write_bytes(content)
    bundle = e.bundle_with(tmp_path, e.spec(ids=("0:0",)))
    run = run_entry(which, tmp_path, bundle, config)
    # The shim reads `runtimes` before the config (runtime/early.py): a relative entry is then
    # refused at the lookup (127, "a relative path: refused"), never run.
    e.assert_clean_exit(run, allowed=(2, 127) if which == "shim" else (2,))


INVENTORIES: list[tuple[str, bytes]] = [
    ("an integer past the digit limit", b"driver_version: '1'\ncuda_version: '1'\ngpus:\n"
     b"  - index: " + HUGE.encode() + b"\n"),
    ("nesting deep enough to exhaust recursion", b"gpus: " + b"[" * 5000 + b"]" * 5000 + b"\n"),
    ("non-UTF-8 bytes", b"driver_version: '\xff'\n"),
]


@pytest.mark.parametrize("which", ENTRY_POINTS)
@pytest.mark.parametrize("content", [c for _, c in INVENTORIES], ids=[n for n, _ in INVENTORIES])
def test_a_hostile_inventory_gets_one_line_and_exit_2(
        tmp_path: Path, which: str, content: bytes) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_bytes(content)
    config = e.write_config(tmp_path / "gpuhook.toml", tmp_path / "gpuhook.log",
                            inventory=str(inventory))
    bundle = e.bundle_with(tmp_path, e.spec(ids=("0:0",)))
    run = run_entry(which, tmp_path, bundle, config)
    e.assert_clean_exit(run, allowed=(2,))


def test_the_hook_reading_its_state_from_a_device_without_end_stops_at_the_limit(
        tmp_path: Path, config: Path) -> None:
    # stdin is /dev/zero: the hook reads at most the state limit + 1 bytes, then refuses.
    with open("/dev/zero", "rb") as zero:
        p = subprocess.run(e.hook_argv(config), stdin=zero, capture_output=True, env=e.ENV,
                           timeout=e.TIMEOUT, check=False)
    e.assert_clean_exit(e.Run(p.returncode, p.stdout, p.stderr), allowed=(2,))
    assert b"larger than" in p.stderr


@pytest.mark.parametrize("cid", ["\ud800", "ctr-\udfff"], ids=["a lone high surrogate",
                                                              "a lone low surrogate"])
def test_a_container_id_that_cannot_be_encoded_gets_one_line(
        tmp_path: Path, config: Path, cid: str) -> None:
    # Found by the shim fuzzer: os.execve cannot encode such an argument for the runtime.
    bundle = e.bundle_with(tmp_path, e.spec())
    run = e.run_forked(e.shim_main(bundle, config, cid))
    e.assert_clean_exit(run, allowed=(2,))
    assert "cannot be encoded" in e.assert_one_line(run.stderr)
