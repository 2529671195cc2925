"""`add_device_rules` against the real kernel: a cgroup v2 child cgroup with runc-style device
programs attached, and a probe process inside it that opens device nodes.

Nodes with majors 510/511 have no driver on the test machines, so an open the cgroup allows fails
with ENXIO and one it denies fails with EPERM. On a cgroup hybrid host (v1 devices controller +
cgroup2 at /sys/fs/cgroup/unified) the probe stays in the root v1 devices cgroup, which allows
everything, so what these tests see is the v2 program alone.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpuhook.decide.plan import CgroupRule
from gpuhook.enforce import bpf
from gpuhook.enforce.bpf import ANY, Insn
from gpuhook.errors import ApplyError
from tests.bpf_fixtures import RUNC_DEFAULTS, RuncRule, b, c, runc_style_program

pytestmark = pytest.mark.e2e

MULTI, OVERRIDE, EXCLUSIVE = bpf.BPF_F_ALLOW_MULTI, bpf.BPF_F_ALLOW_OVERRIDE, 0
OK, EPERM, ENXIO = "OK", "EPERM", "ENXIO"
NODE_MAJORS = (510, 511)
NODE_MINORS = range(1, 10)


def cgroup2_mount(mountinfo: str) -> str | None:
    """The cgroup2 mount point, /sys/fs/cgroup preferred (unified) over a hybrid's unified/."""
    points = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        if after.split(" ", 1)[0] == "cgroup2":
            points.append(before.split()[4])
    return "/sys/fs/cgroup" if "/sys/fs/cgroup" in points else (points[0] if points else None)


@pytest.fixture(scope="module")
def cgroup2_root() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates cgroups and loads BPF programs")
    root = cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    if root is None:
        pytest.skip("no cgroup2 hierarchy is mounted")
    return root


class Cgroups:
    """Unique cgroups under the cgroup2 root, removed (deepest first) at the end."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.made: list[str] = []

    def make(self, parent: str | None = None) -> str:
        path = os.path.join(parent or self.root, f"gpuhook-bpf-{uuid.uuid4().hex[:12]}")
        os.mkdir(path)
        self.made.append(path)
        return path

    def remove_all(self) -> None:
        for path in reversed(self.made):
            os.rmdir(path)


@pytest.fixture
def cgroups(cgroup2_root: str) -> Iterator[Cgroups]:
    made = Cgroups(cgroup2_root)
    yield made
    made.remove_all()


@pytest.fixture
def cgroup(cgroups: Cgroups) -> str:
    return cgroups.make()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """char nodes c<major>_<minor>, block nodes b<major>_<minor>; majors without a driver."""
    d = tmp_path_factory.mktemp("devnodes")
    for major in NODE_MAJORS:
        for minor in NODE_MINORS:
            os.mknod(d / f"c{major}_{minor}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.mknod(d / f"b{major}_{minor}", stat.S_IFBLK | 0o666, os.makedev(major, minor))
    return d


PROBE = r"""
import errno, os, stat, sys
flags = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}
for line in sys.stdin:
    op, path, *dev = line.split()
    try:
        if op == "mknod":
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(int(dev[0]), int(dev[1])))
            os.unlink(path)
        else:
            os.close(os.open(path, flags[op] | os.O_CLOEXEC))
        print("OK", flush=True)
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
"""


class Probe:
    """A process in `cgroup` that opens (or mknods) what it is told and answers with the errno,
    like a container process would see it."""

    def __init__(self, cgroup: str, nodes: Path) -> None:
        self.nodes = nodes
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", PROBE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
        )
        Path(cgroup, "cgroup.procs").write_text(str(self.proc.pid))

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def open(self, path: str | Path, mode: str = "r") -> str:
        return self.ask(f"{mode} {path}")

    def char(self, major: int, minor: int, mode: str = "r") -> str:
        return self.open(self.nodes / f"c{major}_{minor}", mode)

    def block(self, major: int, minor: int, mode: str = "r") -> str:
        return self.open(self.nodes / f"b{major}_{minor}", mode)

    def mknod(self, major: int, minor: int) -> str:
        return self.ask(f"mknod {self.nodes}/made-{uuid.uuid4().hex[:8]} {major} {minor}")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def probe_in() -> Iterator[type[Probe]]:
    started: list[Probe] = []

    class Tracked(Probe):
        def __init__(self, cgroup: str, nodes: Path) -> None:
            super().__init__(cgroup, nodes)
            started.append(self)

    yield Tracked
    for p in started:
        p.close()


@dataclass
class Cg:
    """An open cgroup directory, for attaching baselines and looking at what is attached."""

    path: str

    def fd(self) -> int:
        return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def attach(self, insns: Sequence[Insn], flags: int = MULTI) -> int:
        cg_fd, prog_fd = self.fd(), bpf.load_device_program(bpf.encode(insns))
        try:
            bpf.attach(cg_fd, prog_fd, flags)
            return bpf.prog_id(prog_fd)
        finally:
            os.close(prog_fd)
            os.close(cg_fd)

    def programs(self) -> tuple[int, list[int]]:
        cg_fd = self.fd()
        try:
            return bpf.query_programs(cg_fd)
        finally:
            os.close(cg_fd)


def runc_like(*extra: CgroupRule, default_allow: bool = False) -> list[Insn]:
    return runc_style_program([RuncRule(r) for r in (*RUNC_DEFAULTS, *extra)], default_allow)


# --- the baseline really is enforced here --------------------------------------------------------


def test_a_runc_style_program_is_enforced_for_a_process_in_the_cgroup(
    cgroup: str, nodes: Path, probe_in: type[Probe]
) -> None:
    probe = probe_in(cgroup, nodes)
    assert probe.char(510, 1) == ENXIO  # no program yet: the v1 root devices cgroup allows all
    Cg(cgroup).attach(runc_like())
    assert probe.char(510, 1) == EPERM
    assert probe.open("/dev/null", "rw") == OK


def test_a_second_allow_program_alone_does_not_allow_the_device(
    cgroup: str, nodes: Path, probe_in: type[Probe]
) -> None:
    """Why add_device_rules replaces programs: every attached program must allow an access."""
    cg = Cg(cgroup)
    cg.attach(runc_like())
    cg.attach(bpf.allow_program([c(510, 1)], default=1))
    assert probe_in(cgroup, nodes).char(510, 1) == EPERM


def test_the_kernel_gives_back_the_instructions_that_were_loaded() -> None:
    for insns in (runc_like(c(511, 7, "r")), bpf.allow_program([c(195, 0, "rw"), b(8, ANY)])):
        fd = bpf.load_device_program(bpf.encode(insns))
        try:
            prog_type, code = bpf.prog_xlated(fd)
        finally:
            os.close(fd)
        assert prog_type == bpf.BPF_PROG_TYPE_CGROUP_DEVICE
        assert bpf.decode(code) == insns


# --- adding rules --------------------------------------------------------------------------------


def test_added_rule_allows_its_device_and_nothing_else(
    cgroup: str, nodes: Path, probe_in: type[Probe]
) -> None:
    cg = Cg(cgroup)
    old_id = cg.attach(runc_like(c(511, 7, "r")))
    probe = probe_in(cgroup, nodes)
    assert probe.char(510, 1) == EPERM

    note = bpf.add_device_rules(cgroup, [c(510, 1)])

    flags, ids = cg.programs()
    assert flags == MULTI and len(ids) == 1 and ids[0] != old_id
    assert note == (
        f"cgroup v2 {cgroup}: replaced device program id {old_id} with id {ids[0]} "
        "(multi mode, +1 allow rule)"
    )
    assert probe.char(510, 1, "r") == ENXIO
    assert probe.char(510, 1, "rw") == ENXIO
    assert probe.char(510, 2) == EPERM, "a device in neither set must stay denied"
    assert probe.char(511, 7, "r") == ENXIO, "the old program's rules still apply"
    assert probe.char(511, 7, "w") == EPERM, "the old program's access bits still apply"
    assert probe.open("/dev/null", "rw") == OK
    assert probe.open("/dev/zero", "r") == OK


@pytest.mark.parametrize(
    ("access", "op", "expected"),
    [
        pytest.param("r", "r", ENXIO, id="r allows opening read-only"),
        pytest.param("r", "w", EPERM, id="r does not allow opening write-only"),
        pytest.param("r", "rw", EPERM, id="r does not allow opening read-write"),
        pytest.param("r", "mknod", EPERM, id="r does not allow mknod"),
        pytest.param("w", "w", ENXIO, id="w allows opening write-only"),
        pytest.param("w", "r", EPERM, id="w does not allow opening read-only"),
        pytest.param("rw", "rw", ENXIO, id="rw allows opening read-write"),
        pytest.param("rw", "mknod", EPERM, id="rw does not allow mknod"),
        pytest.param("m", "mknod", OK, id="m allows mknod"),
        pytest.param("m", "r", EPERM, id="m does not allow opening"),
        pytest.param("rwm", "rw", ENXIO, id="rwm allows opening read-write"),
        pytest.param("rwm", "mknod", OK, id="rwm allows mknod"),
    ],
)
def test_access_bits_are_honoured(
    cgroup: str, nodes: Path, probe_in: type[Probe], access: str, op: str, expected: str
) -> None:
    Cg(cgroup).attach(runc_like())
    bpf.add_device_rules(cgroup, [c(510, 1, access)])
    probe = probe_in(cgroup, nodes)
    assert (probe.mknod(510, 1) if op == "mknod" else probe.char(510, 1, op)) == expected


def test_a_block_rule_does_not_allow_the_char_device_of_the_same_number(
    cgroup: str, nodes: Path, probe_in: type[Probe]
) -> None:
    Cg(cgroup).attach(runc_like())
    bpf.add_device_rules(cgroup, [b(510, 1, "r")])
    probe = probe_in(cgroup, nodes)
    assert probe.block(510, 1) == ENXIO
    assert probe.char(510, 1) == EPERM


def test_a_deny_list_program_keeps_its_denials(
    cgroup: str, nodes: Path, probe_in: type[Probe]
) -> None:
    Cg(cgroup).attach(runc_style_program([RuncRule(c(510, 3), allow=False)], default_allow=True))
    bpf.add_device_rules(cgroup, [c(510, 1)])
    probe = probe_in(cgroup, nodes)
    assert probe.char(510, 1) == ENXIO
    assert probe.char(510, 3) == EPERM
    assert probe.char(510, 9) == ENXIO


def test_adding_twice_keeps_both_additions(cgroup: str, nodes: Path, probe_in: type[Probe]) -> None:
    Cg(cgroup).attach(runc_like())
    bpf.add_device_rules(cgroup, [c(510, 1)])
    bpf.add_device_rules(cgroup, [c(510, 2), c(511, ANY, "r")])
    probe = probe_in(cgroup, nodes)
    assert [probe.char(510, m) for m in (1, 2, 3)] == [ENXIO, ENXIO, EPERM]
    assert [probe.char(511, 5, mode) for mode in ("r", "w")] == [ENXIO, EPERM]
    assert len(Cg(cgroup).programs()[1]) == 1


@pytest.mark.parametrize(
    ("flags", "use_replace"),
    [
        pytest.param(MULTI, True, id="multi mode swaps with BPF_F_REPLACE"),
        pytest.param(MULTI, False, id="multi mode without REPLACE attaches then detaches"),
        pytest.param(OVERRIDE, True, id="override mode swaps by attaching with the same flags"),
        pytest.param(EXCLUSIVE, True, id="exclusive mode swaps by attaching with the same flags"),
    ],
)
def test_each_attach_mode_ends_with_one_extended_program(
    cgroup: str, nodes: Path, probe_in: type[Probe], flags: int, use_replace: bool
) -> None:
    cg = Cg(cgroup)
    old_id = cg.attach(runc_like(), flags)
    note = bpf.add_device_rules(cgroup, [c(510, 1)], use_replace=use_replace)
    now_flags, ids = cg.programs()
    assert now_flags == flags
    assert len(ids) == 1 and ids[0] != old_id
    assert f"id {old_id} with id {ids[0]}" in note
    probe = probe_in(cgroup, nodes)
    assert probe.char(510, 1) == ENXIO
    assert probe.char(510, 2) == EPERM
    assert probe.open("/dev/null", "rw") == OK


def test_every_attached_program_is_extended(
    cgroup: str, nodes: Path, probe_in: type[Probe]
) -> None:
    cg = Cg(cgroup)
    first = cg.attach(runc_like(c(510, 1), c(510, 2)))
    second = cg.attach(runc_like(c(510, 1), c(510, 3)))
    probe = probe_in(cgroup, nodes)
    assert [probe.char(510, m) for m in (1, 2, 3, 4)] == [ENXIO, EPERM, EPERM, EPERM]

    note = bpf.add_device_rules(cgroup, [c(510, 4)])

    _, ids = cg.programs()
    assert len(ids) == 2 and not {first, second} & set(ids)
    assert f"programs id {min(first, second)}, {max(first, second)} with id" in note
    assert "+1 allow rule each" in note
    assert [probe.char(510, m) for m in (1, 2, 3, 4)] == [ENXIO, EPERM, EPERM, ENXIO]


def test_without_a_program_nothing_is_attached(
    cgroup: str, nodes: Path, probe_in: type[Probe]
) -> None:
    note = bpf.add_device_rules(cgroup, [c(510, 1)])
    assert "no device program attached" in note
    assert Cg(cgroup).programs() == (0, [])
    probe = probe_in(cgroup, nodes)
    assert probe.char(510, 1) == ENXIO
    assert probe.char(510, 2) == ENXIO  # still everything: nothing narrowed


def test_an_ancestor_program_is_named_and_still_decides(
    cgroups: Cgroups, nodes: Path, probe_in: type[Probe]
) -> None:
    parent = cgroups.make()
    child = cgroups.make(parent)
    Cg(parent).attach(runc_like())
    note = bpf.add_device_rules(child, [c(510, 1)])
    assert "1 device program(s) inherited from ancestor cgroups" in note
    assert Cg(child).programs() == (0, [])
    assert probe_in(child, nodes).char(510, 1) == EPERM


# --- failures leave the cgroup as it was ---------------------------------------------------------


def test_a_program_that_calls_a_helper_is_left_unchanged(
    cgroup: str, nodes: Path, probe_in: type[Probe]
) -> None:
    ktime_get_ns = 5
    cg = Cg(cgroup)
    old_id = cg.attach([Insn(bpf.CALL, imm=ktime_get_ns), *bpf.return_imm(0)])
    with pytest.raises(ApplyError, match=f"program id {old_id}: instruction 0 calls a helper"):
        bpf.add_device_rules(cgroup, [c(510, 1)])
    assert cg.programs() == (MULTI, [old_id])
    assert probe_in(cgroup, nodes).char(510, 1) == EPERM


def test_a_missing_cgroup_is_an_apply_error(cgroup2_root: str) -> None:
    missing = os.path.join(cgroup2_root, f"gpuhook-bpf-missing-{uuid.uuid4().hex[:12]}")
    with pytest.raises(ApplyError, match=f"{missing}: opening the cgroup directory"):
        bpf.add_device_rules(missing, [c(510, 1)])


def test_an_invalid_rule_fails_before_the_cgroup_is_touched(cgroup: str) -> None:
    cg = Cg(cgroup)
    old_id = cg.attach(runc_like())
    with pytest.raises(ApplyError, match="type 'a'"):
        bpf.add_device_rules(cgroup, [c(510, 1), CgroupRule("a", ANY, ANY, "rwm")])
    assert cg.programs() == (MULTI, [old_id])


@pytest.mark.parametrize(
    ("insns", "log_says"),
    [
        pytest.param(
            [bpf.alu32_reg(bpf.ALU_MOV, bpf.R0, bpf.R2), bpf.exit_insn()],
            "R2 !read_ok",
            id="reading an unset register",
        ),
        pytest.param(
            [Insn(bpf.CLS_STX | bpf.MODE_MEM, bpf.R1, bpf.R1, 0), *bpf.return_imm(1)],
            "invalid bpf_context access",
            id="writing to the ctx",
        ),
    ],
)
def test_the_verifier_log_reaches_the_apply_error(insns: list[Insn], log_says: str) -> None:
    with pytest.raises(ApplyError) as raised:
        bpf.load_device_program(bpf.encode(insns))
    message = str(raised.value)
    assert "BPF_PROG_LOAD" in message and "verifier log:" in message
    assert log_says in message
    assert os.strerror(errno.EACCES) in message or os.strerror(errno.EINVAL) in message


# --- runc's own program --------------------------------------------------------------------------


def runc_v2(state: Path, *args: str) -> tuple[int, str]:
    """`runc --root state ARGS` in cgroup v2 mode: in its own mount namespace with cgroup2 at
    /sys/fs/cgroup (mounted there unless it already is: the same hierarchy the test sees at its
    cgroup2 root). Output goes to a file:
    a detached container keeps its stdio open, so a pipe would never reach EOF."""
    script = (
        '[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || mount -t cgroup2 none /sys/fs/cgroup'
        ' && exec runc --root "$0" "$@"'
    )
    log = state.parent / f"runc-{uuid.uuid4().hex[:8]}.log"
    with log.open("w") as out:
        rc = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, str(state), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            timeout=60,
            check=False,
        ).returncode
    return rc, log.read_text()


def test_the_program_runc_attached_is_extended(
    cgroup2_root: str, nodes: Path, probe_in: type[Probe], tmp_path: Path
) -> None:
    for tool in ("runc", "unshare", "busybox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    name = f"gpuhook-bpf-runc-{uuid.uuid4().hex[:12]}"
    bundle, state = tmp_path / "bundle", tmp_path / "state"
    (bundle / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "", bundle / "rootfs" / "bin" / "busybox")
    rc, out = runc_v2(state, "spec", "--bundle", str(bundle))
    assert rc == 0, out
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(args=["/bin/busybox", "sleep", "60"], terminal=False)
    config["linux"]["cgroupsPath"] = f"/{name}"
    config["linux"]["resources"]["devices"] = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 511, "minor": 7, "access": "r"},
    ]
    (bundle / "config.json").write_text(json.dumps(config))
    started = runc_v2(state, "run", "-d", "--bundle", str(bundle), name)
    try:
        assert started[0] == 0, started[1]
        cgroup = os.path.join(cgroup2_root, name)
        _, (runc_id,) = Cg(cgroup).programs()
        probe = probe_in(cgroup, nodes)
        assert [probe.char(510, 1), probe.char(511, 7, "r")] == [EPERM, ENXIO]

        note = bpf.add_device_rules(cgroup, [c(510, 1, "rw")])

        _, (new_id,) = Cg(cgroup).programs()
        assert f"id {runc_id} with id {new_id}" in note
        assert probe.char(510, 1, "rw") == ENXIO
        assert probe.char(510, 2) == EPERM
        assert [probe.char(511, 7, "r"), probe.char(511, 7, "w")] == [ENXIO, EPERM]
        assert probe.open("/dev/null", "rw") == OK
        probe.close()
    finally:
        deleted = runc_v2(state, "delete", "-f", name)
    assert deleted[0] == 0, deleted[1]
    assert not os.path.exists(os.path.join(cgroup2_root, name))


def test_a_directory_that_is_not_a_cgroup2_cgroup_is_an_apply_error(tmp_path: Path) -> None:
    with pytest.raises(ApplyError, match=r"BPF_PROG_QUERY .*is it a cgroup v2 directory\?"):
        bpf.add_device_rules(str(tmp_path), [c(510, 1)])


def test_a_failed_swap_puts_back_the_programs_already_swapped(
    cgroup: str, nodes: Path, probe_in: type[Probe]
) -> None:
    """The second swap of two fails for real (its "old" program is not attached, so the kernel
    answers ENOENT to BPF_F_REPLACE); the first, already swapped, must be put back. Driven through
    the internal steps because nothing outside can make the kernel fail between two swaps."""
    cg = Cg(cgroup)
    first = cg.attach(runc_like(c(510, 1)))
    second = cg.attach(runc_like(c(510, 1)))
    fds: list[int] = []
    cg_fd = cg.fd()
    try:
        prefix = bpf.allow_prefix([c(510, 2)])
        real = bpf._prepare(cgroup, fds, first, prefix)
        unattached, other = (bpf.load_device_program(bpf.encode(runc_like())) for _ in "12")
        fds += [unattached, other]
        bogus = bpf._Swap(old_id=0, old_fd=unattached, new_fd=other, new_id=bpf.prog_id(other))
        with pytest.raises(ApplyError, match=rf"No such file or directory; put back {first}$"):
            bpf._swap_all(cgroup, cg_fd, MULTI, [real, bogus], True)
    finally:
        for fd in (cg_fd, *fds):
            os.close(fd)
    assert cg.programs() == (MULTI, [first, second])
    probe = probe_in(cgroup, nodes)
    assert [probe.char(510, 1), probe.char(510, 2)] == [ENXIO, EPERM]
