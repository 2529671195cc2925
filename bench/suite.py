"""gpuhook's benchmarks (issue 8): `bench/run [--reps N] [--only P1,P3] [--json FILE]`.

Each measurement runs its series side by side (interleaved rounds, after warm-up rounds) and
reports min / median / p95 / p99 in ms and the ratio or difference its target is stated in.
Only the measured step is timed: container create/delete around a hook run is not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import (
    GNU_TIME,
    Result,
    Series,
    interleave,
    ratio,
    rss_run,
    stats_ms,
    table,
    timed_run,
)
from bench.world import (
    FAKE,
    GPUHOOK,
    MINIMAL_ENV,
    PYTHON,
    REPO,
    RUNTIME,
    Runc,
    build_rootfs,
    generate_node,
    hook_argv,
    make_bundle,
    refresh,
    state_json,
    write_config,
)

MIG8_INV = FAKE / "inventories" / "8xa100-mig.yaml"
MIG8_HOST = FAKE / "hosts" / "8xa100-mig"
DEFAULT_JSON = REPO / "bench" / "results.json"


class Bench:
    def __init__(self, work: Path, reps: int, p5_rounds: int) -> None:
        self.work = work
        self.reps = reps
        self.p5_rounds = p5_rounds
        self.runc = Runc(work / "runc-root")
        self._rootfs: Path | None = None

    def path(self, name: str) -> Path:
        return self.work / name

    @property
    def rootfs(self) -> Path:
        if self._rootfs is None:
            self._rootfs = build_rootfs(self.path("rootfs"))
        return self._rootfs

    def config(self, name: str, *, inventory: Path = MIG8_INV, host: Path = MIG8_HOST,
               snapshot: bool = True, extra: dict[str, object] | None = None) -> Path:
        cache = self.path(f"run-{name}/inventory.json") if snapshot else None
        cfg = write_config(self.path(f"{name}.toml"), inventory, host,
                           self.path(f"{name}.log"), cache, extra)
        if snapshot:
            refresh(cfg)
        return cfg

    def bundle(self, name: str, **kw: Any) -> Path:
        return make_bundle(self.path(f"bundles/{name}"), self.rootfs, self.work, **kw)


def runc_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (runc, mknod, cgroups)"
    for tool in ("runc", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/bin/busybox").is_file():
        return "busybox-static is not installed (/bin/busybox)"
    return None


def python_pass() -> Series:
    return Series("python -c pass", timed_run([str(PYTHON), "-c", "pass"], env=MINIMAL_ENV))


FLOOR = "python -I -S -c pass (the interpreter floor)"


def interpreter_floor() -> Series:
    return Series(FLOOR, timed_run([str(PYTHON), "-I", "-S", "-c", "pass"], env=MINIMAL_ENV))


# --- P1 ----------------------------------------------------------------------------------------

def p1(b: Bench) -> list[Result]:
    """The venv pair the issue names, plus the installed .deb's /usr/bin/gpuhook when there is
    one (Debian's python3 -I launcher)."""
    cfg = b.config("p1", snapshot=False)
    bundle = b.bundle("p1", args=("true",))
    state = state_json(bundle)
    args = ["hook", "prestart", "--config", str(cfg)]
    pairs: list[tuple[str, str, Series, Series]] = [(
        "P1", "hook, container with no GPU request vs `python -c pass` (.venv)", python_pass(),
        Series("gpuhook hook prestart (no request)",
               timed_run([str(GPUHOOK), *args], stdin=state, env=MINIMAL_ENV)))]
    if Path("/usr/bin/gpuhook").exists():
        pairs.append((
            "P1-DEB", "the installed package: /usr/bin/gpuhook vs /usr/bin/python3 -c pass",
            Series("/usr/bin/python3 -c pass",
                   timed_run(["/usr/bin/python3", "-c", "pass"], env=MINIMAL_ENV)),
            Series("/usr/bin/gpuhook hook prestart",
                   timed_run(["/usr/bin/gpuhook", *args], stdin=state, env=MINIMAL_ENV))))
    interleave([s for *_, base, hook in pairs for s in (base, hook)], b.reps)
    results = []
    for key, title, base_s, hook_s in pairs:
        r = Result(key, title, target="<= 1.15x (median)")
        r.series = {base_s.name: base_s.stats(), hook_s.name: hook_s.stats()}
        base, hook_st = r.series[base_s.name], r.series[hook_s.name]
        r.figures["ratio median"] = ratio(hook_st, base)
        r.figures["ratio min"] = ratio(hook_st, base, "min")
        r.figures["hook - python, median ms"] = hook_st["median"] - base["median"]
        r.check(key, "hook (no request) <= 1.15x python -c pass, median",
                f"{r.figures['ratio median']:.3f}x (min {r.figures['ratio min']:.3f}x)",
                r.figures["ratio median"] <= 1.15)
        results.append(r)
    return results


# --- import profile ----------------------------------------------------------------------------

_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def _imports(argv: list[str], stdin: bytes | None) -> dict[str, tuple[int, int, int]]:
    return _imports_with(PYTHON, argv, stdin)


def launcher_flags(launcher: Path) -> list[str]:
    """The interpreter flags on a launcher's #! line (-IS): `python -X importtime LAUNCHER`
    would run it without them, i.e. with site, which the real start does not run."""
    with launcher.open("rb") as f:
        return f.readline().decode()[2:].split()[1:]


def _imports_with(python: Path, argv: list[str], stdin: bytes | None,
                  ) -> dict[str, tuple[int, int, int]]:
    """module -> (self us, cumulative us, depth) from `python -X importtime` (median of 5)."""
    runs: list[dict[str, tuple[int, int, int]]] = []
    for _ in range(5):
        err = subprocess.run([str(python), "-X", "importtime", *argv], input=stdin,
                             capture_output=True, env=MINIMAL_ENV, check=False).stderr.decode()
        mods: dict[str, tuple[int, int, int]] = {}
        for m in _IMPORT_LINE.finditer(err):
            mods[m.group(4)] = (int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2)
        runs.append(mods)
    out: dict[str, tuple[int, int, int]] = {}
    for name in runs[0]:
        vals = sorted((run[name] for run in runs if name in run), key=lambda v: v[1])
        out[name] = vals[len(vals) // 2]
    return out


def importtime(b: Bench) -> Result:
    r = Result("IMPORT", "python -X importtime: the hook's no-request path")
    cfg = b.config("imp", snapshot=False)
    bundle = b.bundle("imp", args=("true",))
    argv_tail = ["hook", "prestart", "--config", str(cfg)]
    state = state_json(bundle)
    base = _imports(["-c", "pass"], None)
    hook = _imports([*launcher_flags(GPUHOOK), str(GPUHOOK), *argv_tail], state)
    extra = {k: v for k, v in hook.items() if k not in base}
    r.figures["modules imported by python -c pass"] = len(base)
    r.figures["modules imported by the hook"] = len(hook)
    r.figures["self time of the added modules, ms"] = sum(v[0] for v in extra.values()) / 1000
    r.figures["site (incl. .pth files), cumulative ms"] = \
        hook.get("site", (0, 0, 0))[1] / 1000
    top = sorted(hook.items(), key=lambda kv: kv[1][1], reverse=True)[:15]
    r.figures["top 15 by cumulative (self us / cumulative us)"] = [
        f"{'  ' * v[2]}{k}: {v[0]} / {v[1]}" for k, v in top]
    added = sorted(extra.items(), key=lambda kv: kv[1][0], reverse=True)
    r.figures["modules the hook adds, by self time (self us / cumulative us)"] = [
        f"{k}: {v[0]} / {v[1]}" for k, v in added]
    heavy = [m for m in ("click", "yaml", "pynvml", "tomllib", "gpuhook.config",
                         "gpuhook.runtime.pipeline") if m in hook]
    r.figures["heavy modules on the path"] = ", ".join(heavy) or "none"
    return r


# --- P2 ----------------------------------------------------------------------------------------

def _created(b: Bench, bundle: Path) -> tuple[str, int]:
    cid = b.runc.new_id("gpuhook-bench-p2")
    b.runc.create(bundle, cid)
    return cid, int(b.runc.state(cid)["pid"])


def _check_applied(pid: int, minors: range) -> str | None:
    """None when every /dev/nvidiaN exists in the container and its cgroup v1 allows it."""
    dev = Path(f"/proc/{pid}/root/dev")
    missing = [n for n in minors if not (dev / f"nvidia{n}").exists()]
    if missing:
        return f"nodes missing in the container: {missing}"
    cg = ""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrl, path = line.split(":", 2)
        if "devices" in ctrl.split(","):
            cg = path
    allowed = Path(f"/sys/fs/cgroup/devices{cg}/devices.list").read_text().split("\n")
    denied = [n for n in minors if f"c 195:{n} rwm" not in allowed]
    return f"cgroup v1 does not allow minors {denied}" if denied else None


def _gpu_path_imports(b: Bench, bundle: Path, config: Path) -> dict[str, object]:
    """`python -X importtime` of one hook run that applies the 8-GPU plan: what limits P2."""
    cid, pid = _created(b, bundle)
    try:
        err = subprocess.run([str(PYTHON), *launcher_flags(GPUHOOK), "-X", "importtime",
                              str(GPUHOOK), "hook", "prestart",
                              "--config", str(config)], input=state_json(bundle, pid, cid),
                             capture_output=True, env=MINIMAL_ENV, check=False).stderr.decode()
    finally:
        b.runc.delete(cid)
    mods = {m.group(4): (int(m.group(1)), int(m.group(2)))
            for m in _IMPORT_LINE.finditer(err)}
    base = _imports(["-c", "pass"], None)
    added = {k: v for k, v in mods.items() if k not in base}
    top = sorted(added.items(), key=lambda kv: kv[1][0], reverse=True)[:12]
    return {
        "GPU path: self time of modules beyond python -c pass, ms":
            sum(v[0] for v in added.values()) / 1000,
        "GPU path: top 12 by self time (self us / cumulative us)":
            [f"{k}: {v[0]} / {v[1]}" for k, v in top],
    }


def p2(b: Bench) -> Result:
    r = Result("P2", "hook applying an 8-GPU request (8xa100-mig fake: nodes + cgroup v1 rules) "
                     "vs `python -c pass`", target="<= 3x (median)")
    reason = runc_reason()
    if reason:
        r.skipped = reason
        return r
    extra: dict[str, object] = {"allow-full-gpu-on-mig-enabled": True}
    cfg = b.config("p2", extra=extra)
    cfg_yaml = b.config("p2-nosnap", snapshot=False, extra=extra)
    bundle = b.bundle("p2", args=("true",), request_ids=[str(i) for i in range(8)])
    errors: list[str] = []

    def hook_step(config: Path) -> Callable[[], int]:
        def step() -> int:
            cid, pid = _created(b, bundle)
            try:
                t0 = time.perf_counter_ns()
                proc = subprocess.run([str(GPUHOOK), "hook", "prestart", "--config", str(config)],
                                      input=state_json(bundle, pid, cid), capture_output=True,
                                      env=MINIMAL_ENV, check=False)
                elapsed = time.perf_counter_ns() - t0
                if proc.returncode != 0:
                    raise RuntimeError(f"hook exited {proc.returncode}: "
                                       f"{proc.stderr.decode(errors='replace').strip()}")
                if not errors:
                    errors.append(_check_applied(pid, range(8)) or "")
                return elapsed
            finally:
                b.runc.delete(cid)
        return step

    series = [python_pass(), Series("hook, 8 GPUs, fresh snapshot", hook_step(cfg)),
              Series("hook, 8 GPUs, no snapshot (reads YAML)", hook_step(cfg_yaml))]
    try:
        interleave(series, b.reps, warmup=2)
    except RuntimeError as e:
        r.skipped = f"the hook failed: {e}"
        return r
    r.series = {s.name: s.stats() for s in series}
    base = r.series["python -c pass"]
    r.figures["ratio median (snapshot)"] = ratio(r.series[series[1].name], base)
    r.figures["ratio min (snapshot)"] = ratio(r.series[series[1].name], base, "min")
    r.figures["ratio median (no snapshot)"] = ratio(r.series[series[2].name], base)
    r.figures["applied check"] = errors[0] or "8 nodes present, cgroup v1 allows 195:0-7 rwm"
    r.figures.update(_gpu_path_imports(b, bundle, cfg))
    r.check("P2", "hook, 8 GPUs, nodes + cgroup <= 3x python -c pass, median",
            f"{r.figures['ratio median (snapshot)']:.3f}x "
            f"(min {r.figures['ratio min (snapshot)']:.3f}x)"
            + (f"; {errors[0]}" if errors[0] else ""),
            r.figures["ratio median (snapshot)"] <= 3 and not errors[0])
    r.notes.append("each repetition: `runc create` (not timed) -> hook with the container's "
                   "state on stdin (timed) -> `runc delete -f` (not timed): every hook run "
                   "applies to a fresh container, nothing pre-exists")
    return r


# --- P3 ----------------------------------------------------------------------------------------

def _run_step(b: Bench, bundle: Path, binary: str | None = None,
              env: dict[str, str] | None = None, restore: bytes | None = None,
              command: str = "run") -> Callable[[], int]:
    def step() -> int:
        if restore is not None:
            (bundle / "config.json").write_bytes(restore)
        cid = b.runc.new_id()
        argv = b.runc.argv(command, "-b", str(bundle), cid, binary=binary)
        with tempfile.TemporaryFile() as err:
            # A created container's init keeps runc's stdio: a pipe would never reach EOF.
            t0 = time.perf_counter_ns()
            proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=err,
                                  env=env or MINIMAL_ENV, check=False, stdin=subprocess.DEVNULL)
            elapsed = time.perf_counter_ns() - t0
            if command != "run" or proc.returncode != 0:
                b.runc.delete(cid)
            if proc.returncode != 0:
                err.seek(0)
                raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: "
                                   f"{err.read().decode(errors='replace').strip()[-400:]}")
        return elapsed
    return step


def p3(b: Bench) -> Result:
    r = Result("P3", "`runc run` busybox `true`: with the gpuhook prestart hook vs without",
               target="+ <= 10 ms (median)")
    reason = runc_reason()
    if reason:
        r.skipped = reason
        return r
    cfg = b.config("p3", snapshot=False)
    plain = b.bundle("p3-plain", args=("true",))
    hooked = b.bundle("p3-hook", args=("true",), hook=hook_argv(cfg))
    # What limits P3: runc's own cost of running any prestart hook (/bin/true as the hook) and
    # the interpreter's start (`python -I -S -c pass` as the hook, the launcher's flags).
    true_hook = b.bundle("p3-true", args=("true",), hook=["/bin/true", "true"])
    floor_hook = b.bundle("p3-floor", args=("true",),
                          hook=[str(PYTHON), "python", "-I", "-S", "-c", "pass"])
    series = [Series("runc run true", _run_step(b, plain)),
              Series("runc run true + gpuhook hook", _run_step(b, hooked)),
              Series("runc run true + /bin/true as the hook", _run_step(b, true_hook)),
              Series("runc run true + `python -I -S -c pass` as the hook",
                     _run_step(b, floor_hook))]
    interleave(series, b.reps)
    r.series = {s.name: s.stats() for s in series}
    base = r.series[series[0].name]
    hooked_st = r.series[series[1].name]
    r.figures["added median ms"] = hooked_st["median"] - base["median"]
    r.figures["added min ms"] = hooked_st["min"] - base["min"]
    r.figures["of which runc running a hook at all (/bin/true), median ms"] = (
        r.series[series[2].name]["median"] - base["median"])
    r.figures["of which the interpreter's start (python -I -S -c pass - /bin/true), median ms"] = (
        r.series[series[3].name]["median"] - r.series[series[2].name]["median"])
    r.figures["of which gpuhook itself (gpuhook - python -I -S -c pass), median ms"] = (
        hooked_st["median"] - r.series[series[3].name]["median"])
    r.check("P3", "runc run with the hook - without <= +10 ms, median",
            f"+{r.figures['added median ms']:.2f} ms (min +{r.figures['added min ms']:.2f} ms)",
            r.figures["added median ms"] <= 10)
    return r


# --- P4 ----------------------------------------------------------------------------------------

def p4(b: Bench) -> Result:
    r = Result("P4", "decision (`gpuhook dry-run --json`): 64 GPUs x 7 MIG vs 1 GPU x 7 MIG",
               target="<= 1.1x (median, with the inventory snapshot)")
    rows = []
    for name, gpus in (("big", 64), ("small", 1)):
        inv, host = generate_node(b.path(f"node-{name}"), gpus, 7)
        last_mig = f"{gpus - 1}:6"
        bundle = b.bundle(f"p4-{name}", args=("true",), request_ids=[last_mig])
        for snap in (True, False):
            cfg = b.config(f"p4-{name}-{'snap' if snap else 'yaml'}", inventory=inv, host=host,
                           snapshot=snap)
            label = (f"{gpus} GPU{'s' if gpus > 1 else ''} x 7 MIG, request {last_mig}, "
                     f"{'snapshot' if snap else 'YAML'}")
            rows.append(Series(label, timed_run([str(GPUHOOK), "dry-run", str(bundle),
                                                 "--config", str(cfg), "--json"],
                                                env=MINIMAL_ENV)))
    interleave(rows, b.reps)
    r.series = {s.name: s.stats() for s in rows}
    big_snap, big_yaml, small_snap, small_yaml = (r.series[s.name] for s in rows)
    r.figures["ratio median, snapshot (the start path)"] = ratio(big_snap, small_snap)
    r.figures["ratio min, snapshot"] = ratio(big_snap, small_snap, "min")
    r.figures["ratio median, YAML backend read each time"] = ratio(big_yaml, small_yaml)
    r.check("P4", "decision 64x7 MIG <= 1.1x 1 GPU, median (snapshot)",
            f"{r.figures['ratio median, snapshot (the start path)']:.3f}x "
            f"(min {r.figures['ratio min, snapshot']:.3f}x)",
            r.figures["ratio median, snapshot (the start path)"] <= 1.1)
    r.notes.append("both inventories: A100s with seven 1g.5gb MIG instances each, so the request "
                   "(the last GPU's last MIG device) is the same kind; mig-minors lists all "
                   "possible minors (2 + 135 per GPU) like the driver's")
    return r


# --- P5 ----------------------------------------------------------------------------------------

_P5_PROBE = ('for f in /dev/nvidia* /dev/nvidia-caps/*; do [ -c "$f" ] || continue; '
             'r=$( (exec 3<"$f") 2>&1 ) && r=OK; echo "NODE|$f|$r"; done; echo DONE')
# 6 full GPUs (2..7) and the 10 MIG devices of GPUs 0 and 1.
P5_POOL = [str(i) for i in range(2, 8)] + [f"0:{m}" for m in range(3)] + \
          [f"1:{m}" for m in range(7)]


def p5_subsets(n: int = 32) -> list[list[str]]:
    """n different subsets of P5_POOL: n/4 each of 1, 2, 3 and 4 devices, evenly spread over
    the combinations (deterministic)."""
    from itertools import combinations

    out: list[list[str]] = []
    per = n // 4
    for size in (1, 2, 3, 4):
        combos = list(combinations(P5_POOL, size))
        out += [list(combos[i * len(combos) // per]) for i in range(per)]
    return out


def _expected_nodes(cfg: Path, bundle: Path) -> set[str]:
    out = subprocess.run([str(GPUHOOK), "dry-run", str(bundle), "--config", str(cfg), "--json"],
                         check=True, capture_output=True, env=MINIMAL_ENV).stdout
    return {n["path"] for n in json.loads(out)["device_nodes"]
            if n["path"].startswith(("/dev/nvidia", "/dev/nvidia-caps/"))}


def p5(b: Bench) -> Result:
    r = Result("P5", "32 concurrent `runc run` with the hook, each a different GPU/MIG subset",
               target="32/32 correct and p99 <= 3x p50")
    reason = runc_reason()
    if reason:
        r.skipped = reason
        return r
    cfg = b.config("p5")
    subsets = p5_subsets()
    bundles = [b.bundle(f"p5-{i}", args=("sh", "-c", _P5_PROBE), request_ids=s,
                        hook=hook_argv(cfg)) for i, s in enumerate(subsets)]
    expected = [_expected_nodes(cfg, bd) for bd in bundles]
    samples: list[int] = []
    failures: list[str] = []
    correct_per_round: list[int] = []
    for rnd in range(b.p5_rounds):
        outputs: list[tuple[int, int, str, str]] = [(0, 0, "", "")] * len(bundles)

        def start(i: int, rnd: int = rnd,
                  outputs: list[tuple[int, int, str, str]] = outputs) -> None:
            cid = b.runc.new_id(f"gpuhook-bench-p5-{rnd}")
            t0 = time.perf_counter_ns()
            proc = subprocess.run(b.runc.argv("run", "-b", str(bundles[i]), cid),
                                  capture_output=True, env=MINIMAL_ENV, check=False,
                                  stdin=subprocess.DEVNULL, text=True)
            outputs[i] = (time.perf_counter_ns() - t0, proc.returncode, proc.stdout, proc.stderr)
            if proc.returncode != 0:
                b.runc.delete(cid)

        threads = [threading.Thread(target=start, args=(i,)) for i in range(len(bundles))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        correct = 0
        for i, (ns, rc, out, err) in enumerate(outputs):
            samples.append(ns)
            seen = {line.split("|")[1]: line.split("|")[2] for line in out.splitlines()
                    if line.startswith("NODE|")}
            gpu_nodes = {p for p in seen if p != "/dev/nvidiactl"}
            want = expected[i]
            bad_open = {p: v for p, v in seen.items() if "No such device or address" not in v}
            if rc == 0 and "DONE" in out and set(seen) == want and not bad_open:
                correct += 1
            else:
                failures.append(f"round {rnd} #{i} {subsets[i]}: rc {rc}, expected "
                                f"{sorted(want)}, saw {sorted(gpu_nodes)}, opens not ENXIO: "
                                f"{bad_open}, stderr {err.strip()[-200:]}")
        correct_per_round.append(correct)
    st = stats_ms(samples)
    r.series = {f"runc run + hook, 32 at once x {b.p5_rounds} rounds": st}
    r.figures["correct per round"] = " ".join(f"{c}/32" for c in correct_per_round)
    r.figures["p99 / p50"] = st["p99"] / st["median"]
    r.figures["leftover containers"] = len([c for c in b.runc.leftovers()
                                            if c.startswith("gpuhook-bench-p5")])
    r.check("P5", "32/32 correct and p99 <= 3x p50",
            f"{r.figures['correct per round']}, p99/p50 {r.figures['p99 / p50']:.2f}",
            all(c == len(bundles) for c in correct_per_round) and r.figures["p99 / p50"] <= 3)
    r.notes.extend(failures[:5])
    r.notes.append("correct = the container's /dev/nvidia* and /dev/nvidia-caps/* char devices "
                   "are exactly the dry-run plan's nodes for its subset, and each opens with "
                   "ENXIO (cgroup allows, no driver); subsets mix full GPUs 2-7 and the MIG "
                   "devices of GPUs 0-1")
    return r


# --- the runtime shim --------------------------------------------------------------------------

def _state_step(b: Bench, cid: str, binary: str | None = None,
                env: dict[str, str] | None = None) -> Callable[[], int]:
    argv = b.runc.argv("state", cid, binary=binary)
    return timed_run(argv, env=env or MINIMAL_ENV)


WRAPPED_STATE = "python -IS exec'ing runc state (the floor of a Python shim)"
WRAPPED_CREATE = "python -IS exec'ing runc create, no GPU"


def shim(b: Bench) -> Result:
    r = Result("SHIM", "gpuhook-runtime (spec mode) vs plain runc: passthrough (`state`), create "
                       "and run, no-GPU and GPU spec; the interpreter floor",
               target="added over runc <= 1.5x the interpreter floor (median)")
    reason = runc_reason()
    if reason:
        r.skipped = reason
        return r
    cfg = b.config("shim", extra={"allow-full-gpu-on-mig-enabled": True})
    env = {**MINIMAL_ENV, "GPUHOOK_CONFIG": str(cfg)}
    nogpu = b.bundle("shim-nogpu", args=("true",))
    gpu = b.bundle("shim-gpu", args=("true",), request_ids=["2", "3"])
    gpu_spec = (gpu / "config.json").read_bytes()
    rt = str(RUNTIME)
    held = b.runc.new_id("gpuhook-bench-state")
    b.runc.create(nogpu, held)  # a created container for `state` to report on
    # The floor of any runtime shim in Python: an interpreter that only execs runc. runc itself
    # runs slower after a process image that worked for a while (here too, and after a C
    # program that spins as long before its execve): this shows that part apart from gpuhook's.
    wrapper = b.path("python-exec-runc")
    wrapper.write_text(f"#!{PYTHON} -IS\nimport os, sys\n"
                       f"os.execv({shutil.which('runc')!r}, ['runc', *sys.argv[1:]])\n")
    wrapper.chmod(0o755)
    series = [interpreter_floor(), Series("runc state", _state_step(b, held)),
              Series("gpuhook-runtime state", _state_step(b, held, rt, env)),
              Series(WRAPPED_STATE, _state_step(b, held, str(wrapper), env)),
              Series(WRAPPED_CREATE, _run_step(b, nogpu, str(wrapper), env, command="create"))]
    for command in ("create", "run"):
        series += [
            Series(f"runc {command}, no GPU", _run_step(b, nogpu, command=command)),
            Series(f"gpuhook-runtime {command}, no GPU",
                   _run_step(b, nogpu, rt, env, command=command)),
            Series(f"runc {command}, GPU spec (2 GPUs)",
                   _run_step(b, gpu, restore=gpu_spec, command=command)),
            Series(f"gpuhook-runtime {command}, GPU spec (2 GPUs)",
                   _run_step(b, gpu, rt, env, restore=gpu_spec, command=command)),
        ]
    try:
        interleave(series, b.reps, warmup=2)
    finally:
        b.runc.delete(held)
    (gpu / "config.json").write_bytes(gpu_spec)
    r.series = {s.name: s.stats() for s in series}
    floor = r.series[FLOOR]
    bound = 1.5 * floor["median"]
    r.figures["interpreter floor median ms"] = floor["median"]
    for name, shim_s, runc_s in (
            ("SHIM-PASS", "gpuhook-runtime state", "runc state"),
            ("SHIM-CREATE", "gpuhook-runtime create, no GPU", "runc create, no GPU")):
        added = r.series[shim_s]["median"] - r.series[runc_s]["median"]
        added_min = r.series[shim_s]["min"] - r.series[runc_s]["min"]
        r.figures[f"{shim_s}: added median ms"] = added
        wrapped = WRAPPED_STATE if name == "SHIM-PASS" else WRAPPED_CREATE
        r.figures[f"{shim_s}: of which any Python exec wrapper (python -IS execv runc), "
                  "median ms"] = r.series[wrapped]["median"] - r.series[runc_s]["median"]
        r.figures[f"{shim_s}: of which gpuhook's own part, median ms"] = (
            r.series[shim_s]["median"] - r.series[wrapped]["median"])
        r.check(name, f"`{shim_s}` - `{runc_s}` <= 1.5x floor, median",
                f"+{added:.2f} ms (min +{added_min:.2f}) vs bound {bound:.2f} ms "
                f"(floor {floor['median']:.2f})", added <= bound)
    for command in ("create", "run"):
        for kind in ("no GPU", "GPU spec (2 GPUs)"):
            a = r.series[f"gpuhook-runtime {command}, {kind}"]
            base = r.series[f"runc {command}, {kind}"]
            r.figures[f"{command}, {kind}: added median ms"] = a["median"] - base["median"]
            r.figures[f"{command}, {kind}: ratio median"] = ratio(a, base)
    r.notes.append("GPU spec: the shim writes linux.devices + allow rules into config.json "
                   "(restored before every repetition, not timed) and execs runc, which creates "
                   "the nodes; plain runc runs the same bundle without devices")
    return r


# --- driver files (issue 14) ---------------------------------------------------------------------

def driver(b: Bench) -> Result:
    r = Result("DRIVER", "GPU start with driver files (1 GPU, compute+utility): gpuhook-runtime "
                         "and the prestart hook vs plain `runc run` of the same bundle; the "
                         "host ldconfig alone",
               target="added <= 2x host ldconfig + 10 ms (median)")
    from tests.fakedriver import build as fakedriver

    reason = runc_reason() or fakedriver.skip_reason()
    if reason:
        r.skipped = reason
        return r
    from gpuhook.enforce import ldconfig

    fake = fakedriver.build_fake_driver(b.path("fakedriver"), fake="8xa100-mig")
    host = fakedriver.make_fake_host(fake, b.path("driver-host"))
    # with an inventory snapshot (`gpuhook inventory refresh`), as a node runs: it also records
    # the driver discovery, so a start reads neither YAML nor the ld cache
    cfg = write_config(b.path("driver.toml"), host.inventory, host.root, b.path("driver.log"),
                       b.path("run-driver/inventory.json"),
                       {"runtimes": ["runc"], "driver-files": True})
    refresh(cfg)
    env = {**MINIMAL_ENV, "GPUHOOK_CONFIG": str(cfg)}
    cfg_off = write_config(b.path("driver-off.toml"), host.inventory, host.root,
                           b.path("driver-off.log"), b.path("run-driver-off/inventory.json"),
                           {"runtimes": ["runc"], "driver-files": False})
    refresh(cfg_off)
    env_off = {**MINIMAL_ENV, "GPUHOOK_CONFIG": str(cfg_off)}
    rootfs = build_rootfs(b.path("rootfs-driver"))  # its own: the driver step writes into it
    for d in ("etc/ld.so.conf.d", "usr/lib/x86_64-linux-gnu"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    plain = make_bundle(b.path("bundles/driver-plain"), rootfs, b.work, request_ids=["2"])
    hooked = make_bundle(b.path("bundles/driver-hook"), rootfs, b.work, request_ids=["2"],
                         hook=hook_argv(cfg))
    hooked_off = make_bundle(b.path("bundles/driver-hook-off"), rootfs, b.work,
                             request_ids=["2"], hook=hook_argv(cfg_off))
    for bundle in (plain, hooked, hooked_off):
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["env"].append("NVIDIA_DRIVER_CAPABILITIES=compute,utility")
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))
    plain_spec = (plain / "config.json").read_bytes()
    copy = b.path("ldconfig-root")
    shutil.copytree(rootfs, copy, symlinks=True)

    def host_ldconfig() -> int:
        t0 = time.perf_counter_ns()
        memfd = ldconfig.sealed_copy(ldconfig.DEFAULT_LDCONFIG)
        root_fd = os.open(copy, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ldconfig.run(memfd, root_fd, str(copy))
        finally:
            os.close(root_fd)
            os.close(memfd)
        return time.perf_counter_ns() - t0

    series = [
        Series("runc run, 1-GPU bundle, no gpuhook", _run_step(b, plain, restore=plain_spec)),
        Series("gpuhook-runtime run (spec mode + create-container hook)",
               _run_step(b, plain, str(RUNTIME), env, restore=plain_spec)),
        Series("runc run + gpuhook prestart hook (hook mode)", _run_step(b, hooked)),
        Series("gpuhook-runtime run, driver-files = false",
               _run_step(b, plain, str(RUNTIME), env_off, restore=plain_spec)),
        Series("prestart hook, driver-files = false", _run_step(b, hooked_off)),
        Series("host ldconfig alone (sealed memfd, private ns, chroot)", host_ldconfig),
        Series("ldconfig -X -r ROOTFS (plain exec, for scale)",
               timed_run([ldconfig.DEFAULT_LDCONFIG, "-X", "-r", str(copy)])),
    ]
    interleave(series, b.reps, warmup=2)
    (plain / "config.json").write_bytes(plain_spec)
    r.series = {s.name: s.stats() for s in series}
    base = r.series[series[0].name]
    for s in series[1:3]:
        r.figures[f"{s.name}: added median ms"] = r.series[s.name]["median"] - base["median"]
    for with_files, without in ((series[1], series[3]), (series[2], series[4])):
        r.figures[f"{with_files.name}: driver files' own median ms"] = (
            r.series[with_files.name]["median"] - r.series[without.name]["median"])
    ldc = r.series[series[5].name]["median"]
    bound = 2 * ldc + 10
    for name, s in (("DRIVER-SHIM", series[1]), ("DRIVER-HOOK", series[2])):
        added = r.series[s.name]["median"] - base["median"]
        added_min = r.series[s.name]["min"] - base["min"]
        r.check(name, "added over plain runc run <= 2x host ldconfig + 10 ms, median",
                f"+{added:.2f} ms (min +{added_min:.2f}) vs bound {bound:.2f} ms "
                f"(ldconfig {ldc:.2f})", added <= bound)
    r.notes.append("each start mounts libcuda, libnvidia-ml (+ stubs the capabilities select), "
                   "nvidia-smi and firmware, creates the links and runs the host's ldconfig; "
                   "the rootfs is reused, so links and the ld.so.conf.d entry exist after the "
                   "first round (a restarted container), the ld cache is rebuilt every time")
    for name, want in (("driver.log", True), ("driver-off.log", False)):
        text = b.path(name).read_text() if b.path(name).exists() else ""
        has = "driver file " in text or "create-container" in text
        if has != want:
            r.notes.append(f"WARNING: {name} {'lacks' if want else 'shows'} driver files")
    return r


# --- peak memory ---------------------------------------------------------------------------------

def rss(b: Bench) -> Result:
    r = Result("RSS", "peak RSS (ru_maxrss from wait4) on the GPU path vs `python -c pass`",
               target="<= 1.5x python -c pass's (median)")
    reason = runc_reason() or (None if Path(GNU_TIME).is_file() else
                               f"{GNU_TIME} is missing (Debian's `time`: scripts/setup)")
    if reason:
        r.skipped = reason
        return r
    extra: dict[str, object] = {"allow-full-gpu-on-mig-enabled": True}
    cfg = b.config("rss", extra=extra)
    # The shim execs the real runtime, and ru_maxrss survives exec: /bin/true as the "runtime"
    # keeps runc's own memory out of the shim's figure (the spec edit runs all the same).
    cfg_shim = b.config("rss-shim", extra={**extra, "runtimes": ["/bin/true"]})
    hook_bundle = b.bundle("rss-hook", args=("true",), request_ids=[str(i) for i in range(8)])
    shim_bundle = b.bundle("rss-shim", args=("true",), request_ids=["2", "3"])
    shim_spec = (shim_bundle / "config.json").read_bytes()
    kib: dict[str, list[int]] = {}

    def python() -> int:
        ns, peak = rss_run([str(PYTHON), "-c", "pass"], env=MINIMAL_ENV)
        kib.setdefault("python -c pass", []).append(peak)
        return ns

    def hook() -> int:
        cid, pid = _created(b, hook_bundle)
        try:
            ns, peak = rss_run([str(GPUHOOK), "hook", "prestart", "--config", str(cfg)],
                               state_json(hook_bundle, pid, cid), MINIMAL_ENV)
        finally:
            b.runc.delete(cid)
        kib.setdefault("hook, 8 GPUs (nodes + cgroup)", []).append(peak)
        return ns

    def shim_create() -> int:
        (shim_bundle / "config.json").write_bytes(shim_spec)
        ns, peak = rss_run([str(RUNTIME), "create", "-b", str(shim_bundle), "rss"],
                           env={**MINIMAL_ENV, "GPUHOOK_CONFIG": str(cfg_shim)})
        if (shim_bundle / "config.json").read_bytes() == shim_spec:
            raise RuntimeError("the shim did not edit the GPU spec")
        kib.setdefault("gpuhook-runtime create, GPU spec (2 GPUs)", []).append(peak)
        return ns

    series = [Series("python -c pass", python), Series("hook", hook), Series("shim", shim_create)]
    interleave(series, min(b.reps, 10), warmup=1)
    r.series = {s.name + " (time)": s.stats() for s in series}
    import statistics

    med = {k: statistics.median(v) for k, v in kib.items()}
    for k, v in kib.items():
        r.figures[f"{k}: peak RSS KiB min / median"] = f"{min(v)} / {med[k]:.0f}"
    base = med["python -c pass"]
    for name, key in (("RSS-HOOK", "hook, 8 GPUs (nodes + cgroup)"),
                      ("RSS-SHIM", "gpuhook-runtime create, GPU spec (2 GPUs)")):
        r.check(name, f"{key} peak RSS <= 1.5x python -c pass's, median",
                f"{med[key] / base:.2f}x ({med[key]:.0f} vs {base:.0f} KiB)",
                med[key] <= 1.5 * base)
    return r


MEASUREMENTS: dict[str, Callable[[Bench], Result | list[Result]]] = {
    "P1": p1, "IMPORT": importtime, "P2": p2, "P3": p3, "P4": p4, "P5": p5, "SHIM": shim,
    "DRIVER": driver, "RSS": rss,
}


def _forget_config_cache(work: Path) -> None:
    """The config cache entries (gpuhook/config_cache.py) of this run's configs."""
    from gpuhook import config_cache

    for cfg in work.glob("*.toml"):
        entry = Path(config_cache.CACHE_DIR) / config_cache.entry_name(cfg.stat())
        entry.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30, help="timed rounds per measurement (30)")
    ap.add_argument("--only", default="", help="comma list of " + ",".join(MEASUREMENTS))
    ap.add_argument("--p5-rounds", type=int, default=2, help="rounds of 32 concurrent starts")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help=f"output ({DEFAULT_JSON})")
    args = ap.parse_args(argv)
    wanted = [k.strip().upper() for k in args.only.split(",") if k.strip()] or list(MEASUREMENTS)
    unknown = [k for k in wanted if k not in MEASUREMENTS]
    if unknown:
        ap.error(f"unknown measurement {', '.join(unknown)}; known: {', '.join(MEASUREMENTS)}")
    if not PYTHON.exists() or not GPUHOOK.exists():
        print(f"bench/run: {PYTHON} or {GPUHOOK} missing: run scripts/setup", file=sys.stderr)
        return 2
    # SIGTERM (timeout, CI cancel) unwinds like Ctrl-C, so containers and the work dir go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="gpuhook-bench-"))
    os.chmod(work, 0o755)
    bench = Bench(work, args.reps, args.p5_rounds)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                    "python": str(PYTHON)},
        "reps": args.reps, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": {}}
    t_start = time.monotonic()
    try:
        for key in wanted:
            t0 = time.monotonic()
            try:
                got = MEASUREMENTS[key](bench)
            except Exception as e:
                got = Result(key, "failed", skipped=f"{type(e).__name__}: {e}")
            for res in got if isinstance(got, list) else [got]:
                print(table(res), flush=True)
                results["results"][res.key] = res.to_json()
            print(f"   ({time.monotonic() - t0:.1f} s)\n", flush=True)
    finally:
        for cid in bench.runc.leftovers():
            bench.runc.delete(cid)
        _forget_config_cache(work)
        shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - t_start, 1)
    print("== summary: every target")
    for k, v in results["results"].items():
        if v["skipped"] and v["target"]:
            print(f"   {k:<12} {v['target']}: not run ({v['skipped']})")
        for c in v["checks"]:
            print(f"   {c['name']:<12} {'met    ' if c['met'] else 'NOT MET'}  {c['target']}: "
                  f"{c['figure']}")
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(f"   wrote {args.json} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
