"""Device cgroup discovery (mountinfo + /proc/<pid>/cgroup parsers) and cgroup v1 rules.

The mountinfo and cgroup texts are taken from this machine: the cgroup hybrid host as runc's
v1 mode sees it, and runc's v2 mode inside `unshare -m` after `mount -t cgroup2 none
/sys/fs/cgroup` (a cgroup2 mount covering the v1 tmpfs).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuhook.decide.plan import CgroupRule
from gpuhook.enforce.cgroup import (
    CgroupEntry,
    DeviceCgroup,
    allow_v1,
    cgroup_version,
    deny_v1,
    find_device_cgroup,
    locate_device_cgroup,
    parse_cgroup_file,
    parse_mountinfo,
    v1_rule_line,
)
from gpuhook.errors import ApplyError
from gpuhook.text import mountinfo_unescape

HYBRID = """\
22 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
70 69 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
71 70 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
75 70 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
79 70 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
80 70 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_IN_UNSHARE = HYBRID + "81 70 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 none rw\n"
PURE_V2 = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate
"""
COMOUNTED_V1 = """\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct,devices rw,relatime - cgroup cgroup rw,cpu,cpuacct,devices
"""
# Inside another container (cgroup namespace root /kubepods/pod1): the hierarchy is mounted
# from that root, and the cgroup file shows full paths.
NESTED_V1 = """\
40 35 0:33 /kubepods/pod1 /sys/fs/cgroup/devices ro,relatime - cgroup cgroup rw,devices
"""
CONTAINER_CGROUP = """\
9:name=systemd:/gpuhook-e2e-1
5:devices:/gpuhook-e2e-1
1:cpu:/gpuhook-e2e-1
0::/gpuhook-e2e-1
"""


def test_mountinfo_fields_and_optional_tags() -> None:
    [proc, *_] = parse_mountinfo(HYBRID)
    assert (proc.mount_id, proc.parent_id, proc.root, proc.mount_point, proc.fstype,
            proc.source, proc.super_options) == (22, 27, "/", "/proc", "proc", "proc", ("rw",))


def test_mountinfo_unescapes_spaces_and_backslashes() -> None:
    [m] = parse_mountinfo(r"1 2 0:1 /a\040b /mnt/x\040y\134z rw - ext4 /dev/x\040y rw" + "\n")
    assert (m.root, m.mount_point, m.source) == ("/a b", "/mnt/x y\\z", "/dev/x y")


@pytest.mark.parametrize(("field", "meant"), [
    (r"/a\040b", "/a b"), (r"/x\134\011y", "/x\\\ty"), (r"/bad\089", r"/bad\089"),
    (r"/short\04", r"/short\04"), ("/plain", "/plain")],
    ids=["a space", "a backslash and a tab", "not octal: kept", "cut short: kept", "no escape"])
def test_a_mountinfo_field_is_unescaped_as_the_kernel_escaped_it(field: str, meant: str) -> None:
    # the one reader of escapes for both mountinfo parsers (cgroup lookup, ldconfig's jail)
    assert mountinfo_unescape(field) == meant


@pytest.mark.parametrize("line", ["1 2 0:1 / /mnt rw ext4 /dev/x rw", "x 2 0:1 / /m rw - a b c"],
                         ids=["no separator", "non-numeric mount id"])
def test_malformed_mountinfo_is_an_error_naming_the_line(line: str) -> None:
    with pytest.raises(ApplyError, match="mountinfo line 1"):
        parse_mountinfo(line)


@pytest.mark.parametrize(("text", "expected"), [
    ("0::/", [CgroupEntry(0, (), "/")]),
    ("5:devices:/a/b", [CgroupEntry(5, ("devices",), "/a/b")]),
    ("3:cpu,cpuacct:/x\n", [CgroupEntry(3, ("cpu", "cpuacct"), "/x")]),
    ("1:name=systemd:/user.slice/a:b", [CgroupEntry(1, ("name=systemd",), "/user.slice/a:b")]),
], ids=["unified root", "devices controller", "co-mounted controllers",
        "named hierarchy with a colon in the path"])
def test_cgroup_file_lines(text: str, expected: list[CgroupEntry]) -> None:
    assert parse_cgroup_file(text) == expected


@pytest.mark.parametrize("text", ["devices:/x", "5:devices", "5:devices:relative"],
                         ids=["no hierarchy id", "no path", "relative path"])
def test_malformed_cgroup_file_is_an_error(text: str) -> None:
    with pytest.raises(ApplyError, match="cgroup file line 1"):
        parse_cgroup_file(text)


@pytest.mark.parametrize(("mountinfo", "version"), [
    (HYBRID, 1), (V2_IN_UNSHARE, 2), (PURE_V2, 2), (COMOUNTED_V1, 1), ("", 1),
], ids=["hybrid host is v1 even with cgroup2 at unified",
        "cgroup2 mounted over the v1 tmpfs is v2", "pure v2 host is v2",
        "co-mounted v1 is v1", "nothing mounted is v1"])
def test_mode_is_what_is_mounted_at_sys_fs_cgroup(mountinfo: str, version: int) -> None:
    assert cgroup_version(parse_mountinfo(mountinfo)) == version


@pytest.mark.parametrize(("mountinfo", "cgroup_file", "expected"), [
    (HYBRID, CONTAINER_CGROUP, DeviceCgroup(1, "/sys/fs/cgroup/devices/gpuhook-e2e-1")),
    (V2_IN_UNSHARE, CONTAINER_CGROUP, DeviceCgroup(2, "/sys/fs/cgroup/gpuhook-e2e-1")),
    (PURE_V2, "0::/system.slice/x.scope\n", DeviceCgroup(2, "/sys/fs/cgroup/system.slice/x.scope")),
    (COMOUNTED_V1, "4:cpu,cpuacct,devices:/k/c\n",
     DeviceCgroup(1, "/sys/fs/cgroup/cpu,cpuacct,devices/k/c")),
    (NESTED_V1, "5:devices:/kubepods/pod1/c9\n", DeviceCgroup(1, "/sys/fs/cgroup/devices/c9")),
    (NESTED_V1, "5:devices:/kubepods/pod1\n", DeviceCgroup(1, "/sys/fs/cgroup/devices")),
], ids=["runc v1 on the hybrid host", "runc v2 in its own mount ns", "systemd-style v2 host",
        "devices co-mounted with cpu", "hierarchy mounted from a sub-cgroup",
        "container at the mount root"])
def test_device_cgroup_is_located(mountinfo: str, cgroup_file: str,
                                  expected: DeviceCgroup) -> None:
    found = locate_device_cgroup(parse_mountinfo(mountinfo), parse_cgroup_file(cgroup_file))
    assert found == expected


@pytest.mark.parametrize(("mountinfo", "cgroup_file", "message"), [
    (HYBRID, "0::/x\n1:cpu:/x\n", "no 'devices' hierarchy; its hierarchies: unified, cpu"),
    (PURE_V2, "5:devices:/x\n", "no unified cgroup"),
    ("70 69 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n", "5:devices:/x\n",
     "no cgroup 'devices' controller is mounted"),
    (NESTED_V1, "5:devices:/elsewhere/c\n", "outside the hierarchy"),
    (HYBRID, "5:devices:/../../etc\n", "escapes its hierarchy"),
], ids=["v1 without a devices hierarchy", "v2 without a 0:: line",
        "v1 without a devices mount", "cgroup outside the mounted sub-tree",
        "cgroup path climbing out with .."])
def test_unlocatable_device_cgroup_is_an_error(mountinfo: str, cgroup_file: str,
                                               message: str) -> None:
    with pytest.raises(ApplyError, match=message):
        locate_device_cgroup(parse_mountinfo(mountinfo), parse_cgroup_file(cgroup_file))


def fake_proc(root: Path, pid: int, mountinfo: str, cgroup_file: str) -> None:
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / str(pid)).mkdir()
    (root / "proc" / "self" / "mountinfo").write_text(mountinfo)
    (root / "proc" / str(pid) / "cgroup").write_text(cgroup_file)


def test_find_device_cgroup_reads_under_an_injected_root(tmp_path: Path) -> None:
    fake_proc(tmp_path, 4242, HYBRID, CONTAINER_CGROUP)
    (tmp_path / "sys/fs/cgroup/devices/gpuhook-e2e-1").mkdir(parents=True)
    found = find_device_cgroup(4242, str(tmp_path))
    assert found == DeviceCgroup(1, f"{tmp_path}/sys/fs/cgroup/devices/gpuhook-e2e-1")


def test_find_device_cgroup_fails_when_the_directory_is_gone(tmp_path: Path) -> None:
    fake_proc(tmp_path, 4242, V2_IN_UNSHARE, CONTAINER_CGROUP)
    with pytest.raises(ApplyError, match=r"cgroup v2 directory .*gpuhook-e2e-1 does not exist"):
        find_device_cgroup(4242, str(tmp_path))


def test_find_device_cgroup_fails_for_a_missing_process(tmp_path: Path) -> None:
    fake_proc(tmp_path, 4242, HYBRID, CONTAINER_CGROUP)
    with pytest.raises(ApplyError, match=r"cannot read .*proc/999/cgroup"):
        find_device_cgroup(999, str(tmp_path))


@pytest.mark.parametrize(("rule", "line"), [
    (CgroupRule("c", 195, 1, "rwm"), "c 195:1 rwm"),
    (CgroupRule("c", 511, 202, "r"), "c 511:202 r"),
], ids=["gpu node read-write-mknod", "capability read-only"])
def test_v1_rule_lines(rule: CgroupRule, line: str) -> None:
    assert v1_rule_line(rule) == line


@pytest.mark.parametrize("rule", [CgroupRule("c", 1, 1, ""), CgroupRule("c", 1, 1, "rwx"),
                                  CgroupRule("p", 1, 1, "r")],
                         ids=["empty access", "unknown access letter", "unknown type"])
def test_invalid_v1_rules_are_refused(rule: CgroupRule) -> None:
    with pytest.raises(ApplyError, match="not a valid device rule"):
        v1_rule_line(rule)


def test_allow_v1_writes_one_line_per_rule(tmp_path: Path) -> None:
    (tmp_path / "devices.allow").write_text("")
    rules = [CgroupRule("c", 195, 255, "rwm"), CgroupRule("c", 511, 201, "r")]
    assert allow_v1(str(tmp_path), rules) == ["c 195:255 rwm", "c 511:201 r"]
    # A regular file concatenates the writes; the kernel takes each write() as one rule.
    assert (tmp_path / "devices.allow").read_text() == "c 195:255 rwmc 511:201 r"


def test_allow_v1_without_devices_allow_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ApplyError, match=r"cannot open .*devices\.allow"):
        allow_v1(str(tmp_path), [CgroupRule("c", 195, 0, "rwm")])


def test_deny_v1_writes_the_undo_lines(tmp_path: Path) -> None:
    (tmp_path / "devices.deny").write_text("")
    assert deny_v1(str(tmp_path), ["c 195:0 rwm"]) == []
    assert (tmp_path / "devices.deny").read_text() == "c 195:0 rwm"
    assert deny_v1(str(tmp_path / "gone"), ["c 1:1 r"]) == ["c 1:1 r"]


V1_DEVICES = Path("/sys/fs/cgroup/devices")


@pytest.fixture
def v1_child_cgroup() -> Iterator[Path]:
    """A real v1 devices cgroup whose parent allows only major 195: the kernel then refuses
    to allow anything else in the child (EPERM)."""
    if os.geteuid() != 0 or not (V1_DEVICES / "devices.allow").exists():
        pytest.skip("needs root and a cgroup v1 devices hierarchy at /sys/fs/cgroup/devices")
    parent = V1_DEVICES / f"gpuhook-unit-{uuid.uuid4().hex[:12]}"
    parent.mkdir()
    child = parent / "c"
    try:
        (parent / "devices.deny").write_text("a")
        (parent / "devices.allow").write_text("c 195:* rwm")
        child.mkdir()
        yield child
    finally:
        for d in (child, parent):
            if d.exists():
                d.rmdir()


def test_allow_v1_in_a_real_cgroup_allows_each_rule(v1_child_cgroup: Path) -> None:
    (v1_child_cgroup / "devices.deny").write_text("a")
    allow_v1(str(v1_child_cgroup), [CgroupRule("c", 195, 1, "rwm"),
                                    CgroupRule("c", 195, 255, "r")])
    assert (v1_child_cgroup / "devices.list").read_text().split("\n")[:2] == \
        ["c 195:1 rwm", "c 195:255 r"]


def test_allow_v1_in_a_real_cgroup_takes_back_what_it_allowed_when_a_rule_fails(
        v1_child_cgroup: Path) -> None:
    (v1_child_cgroup / "devices.deny").write_text("a")
    rules = [CgroupRule("c", 195, 1, "rwm"), CgroupRule("c", 510, 0, "rwm")]
    with pytest.raises(ApplyError, match=r"writing 'c 510:0 rwm' to .*devices\.allow"):
        allow_v1(str(v1_child_cgroup), rules)
    assert (v1_child_cgroup / "devices.list").read_text() == ""
