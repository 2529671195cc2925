"""The inventory snapshot: used only while fresh and trustworthy, re-read on any doubt.

Every test works on a private copy of the shipped fake node (host tree + inventory YAML), changes
it the way a driver update, a GPU loss or a MIG reconfiguration would, and counts how often the
backend is read: a fresh snapshot means zero reads, anything else exactly one.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuhook.cli.main import cli
from gpuhook.config import Config
from gpuhook.decide.spec import parse_spec
from gpuhook.errors import HostError, ResolveError
from gpuhook.host.proc import HostPaths, read_mig_minors
from gpuhook.inventory.load import (
    load_for_plan,
    load_for_request,
    load_inventory_noted,
    read_backend,
)
from gpuhook.inventory.model import Inventory
from gpuhook.inventory.snapshot import (
    FORMAT,
    StaleSnapshot,
    build_snapshot,
    decode_snapshot,
    encode_snapshot,
    fresh_inventory,
    read_snapshot,
    write_snapshot,
)
from gpuhook.record import replace
from gpuhook.runtime.pipeline import plan_for_spec
from tests.conftest import HOSTS, INVENTORIES

CAPS = "proc/driver/nvidia/capabilities"
GPU1_MIG_UUID = "MIG-205e24ca-2066-514f-80c3-cb66869f6a1b"  # GPU 1, MIG 0 (gi 7)


@dataclass
class Node:
    """A private fake node: host tree, inventory YAML, config, and a counting backend."""

    tmp: Path
    host: Path
    yaml: Path
    config: Config
    reads: list[str] = field(default_factory=list)

    def backend(self, config: Config) -> Inventory:
        self.reads.append(config.inventory)
        return read_backend(config)

    def refresh(self) -> None:
        write_snapshot(self.config.inventory_cache, build_snapshot(self.config, read_backend))

    def load(self, config: Config | None = None) -> tuple[Inventory, str]:
        return load_inventory_noted(config or self.config, self.backend)

    @property
    def cache(self) -> Path:
        return Path(self.config.inventory_cache)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    host = tmp_path / "host"
    shutil.copytree(HOSTS / "8xa100-mig", host)
    yaml = tmp_path / "inventory.yaml"
    shutil.copy(INVENTORIES / "8xa100-mig.yaml", yaml)
    config = Config(inventory=str(yaml), host_root=str(host), log_file=str(tmp_path / "log"),
                    driver_files=False,
                    inventory_cache=str(tmp_path / "run" / "gpuhook" / "inventory.json"))
    return Node(tmp_path, host, yaml, config)


def test_fresh_snapshot_is_used_without_reading_the_backend(node: Node) -> None:
    node.refresh()
    inventory, note = node.load()
    assert node.reads == []
    assert inventory == read_backend(node.config)
    assert note == f"inventory: fresh snapshot {node.cache}"


def test_without_a_snapshot_the_backend_is_read_and_the_note_says_so(node: Node) -> None:
    _, note = node.load()
    assert node.reads == [str(node.yaml)]
    assert f"no snapshot at {node.cache}" in note


def _write(rel: str, text: str) -> Callable[[Node], None]:
    def change(n: Node) -> None:
        path = n.host / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return change


def _remove(rel: str) -> Callable[[Node], None]:
    def change(n: Node) -> None:
        path = n.host / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return change


def _mkdir(rel: str) -> Callable[[Node], None]:
    return lambda n: (n.host / rel).mkdir(parents=True)


def _touch_mig_minors(n: Node) -> None:
    path = n.host / "proc/driver/nvidia-caps/mig-minors"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _edit_yaml(n: Node) -> None:
    text = n.yaml.read_text()
    n.yaml.write_text(text.replace("profile: 3g.20gb", "profile: 3g.20gx"))  # same size


def _touch_yaml(n: Node) -> None:
    st = n.yaml.stat()
    os.utime(n.yaml, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _sed_mig_minors(n: Node) -> None:
    path = n.host / "proc/driver/nvidia-caps/mig-minors"
    st = path.stat()
    path.write_text(path.read_text().replace("monitor 2\n", "monitor 9\n"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # content alone must be enough


STALE_HOST_CHANGES = [
    pytest.param(_write("sys/module/nvidia/version", "555.42.02\n"),
                 "sys/module/nvidia/version", id="a new driver module version makes it stale"),
    pytest.param(_write("proc/driver/nvidia/version", "NVRM version: 555.42.02\n"),
                 "proc/driver/nvidia/version", id="a new proc driver version makes it stale"),
    pytest.param(_remove("sys/module/nvidia/version"), "sys/module/nvidia/version",
                 id="a version file that disappears makes it stale"),
    pytest.param(_write("proc/sys/kernel/random/boot_id", "5b1c\n"), "boot_id",
                 id="a boot id that appears (a reboot) makes it stale"),
    pytest.param(_write("proc/devices", "Character devices:\n195 nvidia-frontend\n"
                        "508 nvidia-uvm\n511 nvidia-caps\n"), "proc/devices",
                 id="a new nvidia-uvm major (module reloaded) makes it stale"),
    pytest.param(_remove("proc/driver/nvidia/gpus/0000:bd:00.0"), "GPU set",
                 id="a GPU that fell off the bus makes it stale"),
    pytest.param(_mkdir("proc/driver/nvidia/gpus/0000:c1:00.0"), "GPU set",
                 id="a GPU that appears makes it stale"),
    pytest.param(_sed_mig_minors, "mig-minors", id="new mig-minors content makes it stale"),
    pytest.param(_touch_mig_minors, "mig-minors mtime",
                 id="a new mig-minors mtime makes it stale"),
    pytest.param(_remove(f"{CAPS}/gpu1/mig/gi7"), "MIG capability tree",
                 id="a destroyed MIG instance makes it stale"),
    pytest.param(_mkdir(f"{CAPS}/gpu2/mig/gi1/ci0"), "MIG capability tree",
                 id="a created MIG instance makes it stale"),
    pytest.param(_remove(f"{CAPS}/gpu1/mig/gi7/ci0"), "MIG capability tree",
                 id="a destroyed compute instance makes it stale"),
    pytest.param(_edit_yaml, "inventory source",
                 id="edited fake inventory content makes it stale"),
    pytest.param(_touch_yaml, "inventory source", id="a new fake inventory mtime makes it stale"),
]


@pytest.mark.parametrize(("change", "named"), STALE_HOST_CHANGES)
def test_each_host_change_forces_a_backend_read(node: Node, change: Callable[[Node], None],
                                                named: str) -> None:
    node.refresh()
    change(node)
    _, note = node.load()
    assert node.reads == [str(node.yaml)]
    assert "stale" in note
    assert named in note


def _same_content_other_yaml(n: Node) -> Config:
    other = n.tmp / "other.yaml"
    shutil.copy2(n.yaml, other)
    return n.config._replace(inventory=str(other))


def _same_content_other_host(n: Node) -> Config:
    other = n.tmp / "other-host"
    shutil.copytree(n.host, other, copy_function=shutil.copy2)
    return n.config._replace(host_root=str(other))


@pytest.mark.parametrize(("other_config", "named"), [
    pytest.param(_same_content_other_yaml, "inventory source",
                 id="a snapshot of another inventory file is not used"),
    pytest.param(_same_content_other_host, "host-root",
                 id="a snapshot of another host-root is not used"),
    pytest.param(lambda n: n.config._replace(inventory="nvml"), "inventory source",
                 id="a snapshot of the fake backend is not used for nvml"),
])
def test_snapshot_of_another_source_is_not_used(node: Node,
                                                other_config: Callable[[Node], Config],
                                                named: str) -> None:
    node.refresh()
    config = other_config(node)
    with pytest.raises(StaleSnapshot, match=named):
        fresh_inventory(config)


def test_a_real_procfs_boot_id_is_read_and_keeps_the_snapshot_fresh(node: Node) -> None:
    """procfs allocates a kernel buffer of the size read() asks for: one huge read() of
    boot_id fails with ENOMEM, which would leave every real node without a usable snapshot."""
    boot_id = node.host / "proc/sys/kernel/random/boot_id"
    boot_id.parent.mkdir(parents=True)
    boot_id.symlink_to("/proc/sys/kernel/random/boot_id")
    node.refresh()
    assert read_snapshot(str(node.cache))["key"]["files"][
        "proc/sys/kernel/random/boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text()
    _, note = node.load()
    assert (node.reads, note) == ([], f"inventory: fresh snapshot {node.cache}")


def test_missing_driver_version_files_are_doubt_not_freshness(node: Node) -> None:
    node.refresh()
    (node.host / "sys/module/nvidia/version").unlink()
    (node.host / "proc/driver/nvidia/version").unlink()
    _, note = node.load()
    assert node.reads == [str(node.yaml)]
    assert "is the NVIDIA driver loaded" in note


def test_unreadable_host_file_is_doubt_not_freshness(node: Node) -> None:
    node.refresh()
    mig_minors = node.host / "proc/driver/nvidia-caps/mig-minors"
    mig_minors.unlink()
    mig_minors.mkdir()  # read() of a directory fails: EISDIR, even for root
    _, note = node.load()
    assert node.reads == [str(node.yaml)]
    assert "cannot read" in note


def test_mig_reconfigured_after_refresh_never_grants_the_old_instance(node: Node) -> None:
    """GPU 1's seven 1g.5gb instances become one 7g.40gb: the old MIG uuid must be refused
    although the snapshot still lists it."""
    node.refresh()
    text = node.yaml.read_text()
    start = text.index("  - index: 1\n")
    end = text.index("  - index: 2\n")
    node.yaml.write_text(text[:start] + (
        "  - index: 1\n    minor: 1\n    uuid: GPU-a20437c3-13ec-57e1-9cc3-5160b557c9b2\n"
        "    pci_bus_id: \"0000:0f:00.0\"\n    name: NVIDIA A100-SXM4-40GB\n"
        "    mig_enabled: true\n    mig_devices:\n"
        "      - {index: 0, uuid: MIG-00000000-0000-4000-8000-000000000007, gi: 0, ci: 0, "
        "profile: 7g.40gb}\n") + text[end:])
    shutil.rmtree(node.host / CAPS / "gpu1/mig")
    (node.host / CAPS / "gpu1/mig/gi0/ci0").mkdir(parents=True)
    spec = parse_spec(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": f"/var/run/nvidia-container-devices/{GPU1_MIG_UUID}",
                    "type": "bind", "source": "/dev/null"}],
    }).encode())
    assert read_snapshot(str(node.cache))["inventory"]["gpus"][1]["mig_devices"][0][
        "uuid"] == GPU1_MIG_UUID
    with pytest.raises(ResolveError, match=GPU1_MIG_UUID):
        plan_for_spec(spec, node.config)


def test_plan_notes_a_fresh_snapshot(node: Node) -> None:
    node.refresh()
    spec = parse_spec(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/var/run/nvidia-container-devices/3", "type": "bind",
                    "source": "/dev/null"}],
    }).encode())
    plan = plan_for_spec(spec, node.config)
    assert [d.index for d in plan.devices] == ["3"]
    assert f"inventory: fresh snapshot {node.cache}" in plan.notes


def test_fresh_snapshot_gives_the_plan_the_hosts_mig_minors(node: Node) -> None:
    node.refresh()
    inventory, _, minors = load_for_plan(node.config, node.backend)
    assert inventory == read_backend(node.config)
    assert node.reads == []
    assert minors == read_mig_minors(HostPaths(str(node.host)))


def test_stale_snapshot_leaves_mig_minors_to_the_host(node: Node) -> None:
    node.refresh()
    _touch_mig_minors(node)
    _, _, minors = load_for_plan(node.config, node.backend)
    assert node.reads == [str(node.yaml)]
    assert minors is None


# --- a start reads only the GPUs its request names ----------------------------------------------

# Below GPU 1's own dir: only a request that needs GPU 1 looks there.
GPU1_TREE_CHANGES = [
    pytest.param(_remove(f"{CAPS}/gpu1/mig/gi7"), id="a destroyed MIG instance on GPU 1"),
    pytest.param(_mkdir(f"{CAPS}/gpu1/mig/gi1/ci0"), id="a created MIG instance on GPU 1"),
    pytest.param(_remove(f"{CAPS}/gpu1/mig/gi7/ci0"), id="a destroyed compute instance on GPU 1"),
]


@pytest.mark.parametrize("change", [
    *GPU1_TREE_CHANGES,
    # The GPU dirs' names are checked on every start: this one is stale for every request.
    pytest.param(_remove(f"{CAPS}/gpu1"), id="GPU 1's capability dir gone"),
])
@pytest.mark.parametrize("ids", [["1:0"], [GPU1_MIG_UUID], ["1:0", "3"], ["all"]],
                         ids=["by MIG index", "by MIG uuid", "with another GPU", "all"])
def test_a_request_on_a_gpu_whose_mig_tree_changed_reads_the_backend(
        node: Node, change: Callable[[Node], None], ids: list[str]) -> None:
    node.refresh()
    change(node)
    _, note, _, _, partial = load_for_request(node.config, ids, node.backend)
    assert node.reads == [str(node.yaml)] and not partial
    assert "MIG capability tree changed" in note and "gpu1" in note


@pytest.mark.parametrize("ids", [["3"], ["0:2"], ["1:0"]])
def test_a_gpu_capability_dir_that_appears_is_stale_for_every_request(
        node: Node, ids: list[str]) -> None:
    node.refresh()
    (node.host / CAPS / "gpu9/mig").mkdir(parents=True)
    _, note, _, _, partial = load_for_request(node.config, ids, node.backend)
    assert node.reads == [str(node.yaml)] and not partial
    assert "MIG capability tree changed" in note


@pytest.mark.parametrize("change", GPU1_TREE_CHANGES)
@pytest.mark.parametrize("ids", [["3"], ["0:2"], ["GPU-0090A0DD-8667-54DF-9905-315C8492EEDE"]],
                         ids=["GPU index", "MIG index", "GPU uuid"])
def test_a_request_on_another_gpu_keeps_the_snapshot_and_reads_only_its_gpu(
        node: Node, change: Callable[[Node], None], ids: list[str]) -> None:
    node.refresh()
    change(node)
    inventory, note, minors, _, partial = load_for_request(node.config, ids, node.backend)
    assert (node.reads, note, partial) == ([], f"inventory: fresh snapshot {node.cache}", True)
    whole = read_backend(node.config)
    wanted = 3 if ids == ["3"] else 0
    assert inventory.gpus == (whole.gpus[wanted],)
    assert (inventory.driver_version, inventory.cuda_version) == (whole.driver_version,
                                                                  whole.cuda_version)
    host_minors = read_mig_minors(HostPaths(str(node.host)))
    assert minors is not None
    assert minors == {name: minor for name, minor in host_minors.items()
                      if name.startswith(f"gpu{wanted}/") or "/" not in name}


def _request(ids: list[str]) -> bytes:
    return json.dumps({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": f"/var/run/nvidia-container-devices/{i}", "type": "bind",
                    "source": "/dev/null"} for i in ids],
    }).encode()


MANY_UUIDS = [GPU1_MIG_UUID, "GPU-6EAAE5D6-FED8-5DF3-83E2-2BAFA8032E65",
              "MIG-8e511436-4461-5e6a-9bcc-626d0798fb1e"] * 12  # past MANY_IDS: a parsed index


@pytest.mark.parametrize("ids", [
    ["1:6"], [GPU1_MIG_UUID], ["3", "0:1"], ["all"], ["0000:47:00.0"],
    ["GPU-6EAAE5D6-FED8-5DF3-83E2-2BAFA8032E65"], MANY_UUIDS,
], ids=["MIG index", "MIG uuid", "two GPUs", "all", "PCI bus id", "GPU uuid in capitals",
        "many uuids"])
def test_the_plan_from_a_partial_snapshot_is_the_plan_from_the_backend(
        node: Node, ids: list[str]) -> None:
    no_snapshot = plan_for_spec(parse_spec(_request(ids)), node.config)
    node.refresh()
    from_snapshot = plan_for_spec(parse_spec(_request(ids)), node.config)
    assert f"inventory: fresh snapshot {node.cache}" in from_snapshot.notes
    assert from_snapshot.devices
    assert replace(from_snapshot, notes=()) == replace(no_snapshot, notes=())


@pytest.mark.parametrize("wanted", ["8", "1:7", "MIG-00000000-0000-4000-8000-000000000000",
                                    "GPU-00000000-0000-4000-8000-000000000000", "2:0", "1"],
                         ids=["unknown GPU index", "unknown MIG index", "unknown MIG uuid",
                              "unknown GPU uuid", "MIG index on a GPU without MIG",
                              "whole GPU in MIG mode"])
def test_an_unresolvable_id_gets_the_whole_inventorys_error(node: Node, wanted: str) -> None:
    with pytest.raises(ResolveError) as without:
        plan_for_spec(parse_spec(_request([wanted])), node.config)
    node.refresh()
    with pytest.raises(ResolveError) as with_snapshot:
        plan_for_spec(parse_spec(_request([wanted])), node.config)
    assert str(with_snapshot.value) == str(without.value)


def _misplace_uuid(n: Node) -> None:
    """The uuid index sends GPU 1's first MIG uuid to GPU 0's section."""
    raw = n.cache.read_bytes()
    header = json.loads(raw.partition(b"\n")[0])
    start = raw.index(b"\n") + 1 + header["uuids"][0]
    entry = f"{GPU1_MIG_UUID.lower()} 1\n".encode()
    at = raw.index(entry, start)
    n.cache.write_bytes(raw[:at] + entry.replace(b" 1\n", b" 0\n") + raw[at + len(entry):])


@pytest.mark.parametrize("ids", [[GPU1_MIG_UUID], [GPU1_MIG_UUID] * 40],
                         ids=["one id (index searched)", "many ids (index parsed)"])
def test_a_wrong_index_entry_is_never_a_grant_of_another_device(node: Node,
                                                                ids: list[str]) -> None:
    node.refresh()
    _misplace_uuid(node)
    plan = plan_for_spec(parse_spec(_request(ids)), node.config)
    assert [(d.index, d.uuid) for d in plan.devices] == [("1:0", GPU1_MIG_UUID)]


def test_a_snapshot_in_the_one_document_layout_of_format_2_is_refused(node: Node) -> None:
    node.refresh()
    doc = read_snapshot(str(node.cache))
    doc["format"] = "gpuhook-inventory-snapshot/2"
    node.cache.write_text(json.dumps(doc) + "\n")
    _, note = node.load()
    assert node.reads == [str(node.yaml)]
    assert f"not a {FORMAT} document" in note


# --- a snapshot file that is not trustworthy is ignored -----------------------------------------

def _corrupt(text: str) -> Callable[[Node], None]:
    def change(n: Node) -> None:
        n.cache.write_text(text)
    return change


def _edit_doc(edit: Callable[[dict[str, object]], object]) -> Callable[[Node], None]:
    """Edit the document the file holds and write it back in the file's layout."""
    def change(n: Node) -> None:
        doc = read_snapshot(str(n.cache))
        edit(doc)
        n.cache.write_bytes(encode_snapshot(doc))
    return change


def _edit_header(edit: Callable[[dict[str, object]], object]) -> Callable[[Node], None]:
    """Edit the file's header line, leaving its sections as they are."""
    def change(n: Node) -> None:
        header, sep, sections = n.cache.read_bytes().partition(b"\n")
        doc = json.loads(header)
        edit(doc)
        n.cache.write_bytes(json.dumps(doc).encode() + sep + sections)
    return change


def _chmod(mode: int) -> Callable[[Node], None]:
    return lambda n: n.cache.chmod(mode)


def _chown_nobody(n: Node) -> None:
    os.chown(n.cache, 65534, 65534)


def _symlinked(n: Node) -> None:
    real = n.tmp / "elsewhere.json"
    shutil.copy2(n.cache, real)
    n.cache.unlink()
    n.cache.symlink_to(real)


def _directory(n: Node) -> None:
    n.cache.unlink()
    n.cache.mkdir()


def _group_writable_dir(n: Node) -> None:
    n.cache.parent.chmod(0o770)


def _bad_gpu(doc: dict[str, object]) -> None:
    inv = doc["inventory"]
    assert isinstance(inv, dict)
    inv["gpus"][0]["uuid"] = "not-a-uuid"


def _bad_minors(doc: dict[str, object]) -> None:
    minors = doc["mig_minors"]
    assert isinstance(minors, dict)
    minors["monitor"] = "2"


UNTRUSTED = [
    pytest.param(_corrupt("{\"format\": "), "not valid JSON", id="truncated JSON is ignored"),
    pytest.param(_corrupt("\x00\xff garbage"), "not valid JSON", id="binary garbage is ignored"),
    pytest.param(_corrupt("[]"), "not a gpuhook", id="a JSON list is ignored"),
    pytest.param(_edit_doc(lambda d: d.update(format="gpuhook-inventory-snapshot/0")),
                 "not a gpuhook", id="another format version is ignored"),
    pytest.param(_edit_header(lambda d: d.pop("key")), "no freshness key",
                 id="a snapshot without a key is ignored"),
    pytest.param(_edit_doc(_bad_gpu), "must start with 'GPU-'",
                 id="a snapshot with an invalid inventory is ignored"),
    pytest.param(_edit_doc(_bad_minors), "mig_minors must map",
                 id="a snapshot with a non-integer minor is ignored"),
    pytest.param(_chmod(0o644), "mode", id="a world-readable snapshot is ignored"),
    pytest.param(_chmod(0o620), "mode", id="a group-writable snapshot is ignored"),
    pytest.param(_chown_nobody, "owned by uid 65534", id="a snapshot owned by nobody is ignored"),
    pytest.param(_symlinked, "cannot open", id="a symlink to a valid snapshot is ignored"),
    pytest.param(_directory, "not a regular file", id="a directory at the path is ignored"),
    pytest.param(_group_writable_dir, "no group/other write",
                 id="a snapshot in a group-writable directory is ignored"),
]


@pytest.mark.parametrize(("spoil", "named"), UNTRUSTED)
def test_untrusted_snapshot_is_ignored(node: Node, spoil: Callable[[Node], None],
                                       named: str) -> None:
    if os.geteuid() != 0 and spoil is _chown_nobody:
        pytest.skip("chown to another uid needs root")
    node.refresh()
    spoil(node)
    inventory, note = node.load()
    assert node.reads == [str(node.yaml)]
    assert inventory == read_backend(node.config)
    assert named in note


# --- writing -------------------------------------------------------------------------------------

def test_refresh_creates_a_root_only_dir_and_file(node: Node) -> None:
    node.refresh()
    assert stat.S_IMODE(node.cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(node.cache.parent.stat().st_mode) == 0o700
    assert node.cache.stat().st_uid == os.geteuid()
    assert sorted(os.listdir(node.cache.parent)) == ["inventory.json"]  # no temp file left


def test_refresh_replaces_by_rename_so_a_reader_sees_old_or_new_never_half(node: Node) -> None:
    node.refresh()
    with open(node.cache, "rb") as old_reader:
        old_inode = os.fstat(old_reader.fileno()).st_ino
        (node.host / CAPS / "gpu2/mig/gi1").mkdir(parents=True)
        node.refresh()
        assert decode_snapshot(old_reader.read(), "old")["format"] == FORMAT  # whole
    assert node.cache.stat().st_ino != old_inode
    assert fresh_inventory(node.config) == read_backend(node.config)


def test_refresh_refuses_a_directory_others_can_write(node: Node) -> None:
    node.cache.parent.mkdir(parents=True)
    node.cache.parent.chmod(0o777)
    with pytest.raises(HostError, match="not writable by group or others"):
        node.refresh()
    assert not node.cache.exists()


def test_refresh_refuses_when_mig_changes_during_the_backend_read(node: Node) -> None:
    def reconfiguring_backend(config: Config) -> Inventory:
        inventory = read_backend(config)
        (node.host / CAPS / "gpu3/mig/gi1").mkdir(parents=True)
        return inventory

    with pytest.raises(HostError, match="changed while the inventory was read"):
        build_snapshot(node.config, reconfiguring_backend)


# --- the command line ----------------------------------------------------------------------------

def _config_file(n: Node) -> str:
    path = n.tmp / "config.toml"
    path.write_text(f'inventory = "{n.yaml}"\nhost-root = "{n.host}"\n'
                    f'log-file = "{n.tmp}/log"\ninventory-cache = "{n.cache}"\n'
                    "driver-files = false\n")
    return str(path)


def test_cli_refresh_dry_run_prints_the_snapshot_and_writes_nothing(node: Node) -> None:
    result = CliRunner().invoke(cli, ["inventory", "refresh", "--dry-run",
                                      "--config", _config_file(node)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["format"] == FORMAT
    assert doc["majors"] == {"nvidia-frontend": 195, "nvidia": 195, "nvidia-uvm": 510,
                             "nvidia-caps": 511}
    assert doc["mig_minors"]["gpu1/gi7/ci0/access"] > 0
    assert not node.cache.exists()


def test_cli_refresh_then_show_reports_fresh_then_stale(node: Node) -> None:
    config = _config_file(node)
    runner = CliRunner()
    refreshed = runner.invoke(cli, ["inventory", "refresh", "--config", config])
    assert refreshed.exit_code == 0, refreshed.output
    assert "8 GPUs, 10 MIG devices" in refreshed.output
    fresh = runner.invoke(cli, ["inventory", "show", "--config", config])
    assert (fresh.exit_code, fresh.output.split(":")[0]) == (0, "fresh")
    _touch_mig_minors(node)
    stale = runner.invoke(cli, ["inventory", "show", "--config", config])
    assert stale.exit_code == 1
    assert "mig-minors mtime changed (was '" in stale.output and "', now '" in stale.output


def test_snapshot_keeps_arch_and_brand(node: Node) -> None:
    node.refresh()
    doc = read_snapshot(str(node.cache))
    assert {(g["arch"], g["brand"]) for g in doc["inventory"]["gpus"]} == {("8.0", "Unknown")}
    inventory, _ = node.load()
    assert node.reads == [] and {(g.arch, g.brand) for g in inventory.gpus} == {("8.0", "Unknown")}


def test_a_snapshot_from_before_arch_and_brand_is_refused_not_read_as_unknown(node: Node) -> None:
    # A /1 snapshot had no arch/brand: read as "unknown" it would turn judged requirements into
    # notes; refused, the backend is read once and gives them.
    node.refresh()
    doc = read_snapshot(str(node.cache))
    doc["format"] = "gpuhook-inventory-snapshot/1"
    for g in doc["inventory"]["gpus"]:
        del g["arch"], g["brand"]
    node.cache.write_text(json.dumps(doc))
    with pytest.raises(StaleSnapshot, match=f"not a {FORMAT} document"):
        fresh_inventory(node.config)
    inventory, _ = node.load()
    assert node.reads == [str(node.yaml)] and inventory.gpus[0].arch == "8.0"
