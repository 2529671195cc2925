"""Interleaved timing: every series of a measurement runs once per round, in turn, so slow
phases of a noisy 2-core machine hit all of them alike. Statistics and the printed table."""

from __future__ import annotations

import math
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# A run step: returns the elapsed time in nanoseconds of the part that is measured (setup and
# teardown around it are not counted), or raises.
Step = Callable[[], int]


@dataclass
class Series:
    name: str
    step: Step
    samples_ns: list[int] = field(default_factory=list)

    def stats(self) -> dict[str, float]:
        return stats_ms(self.samples_ns)


def stats_ms(samples_ns: Sequence[int]) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    return {"n": len(ms), "min": ms[0], "median": statistics.median(ms),
            "p95": percentile(ms, 95), "p99": percentile(ms, 99), "max": ms[-1]}


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def interleave(series: Sequence[Series], reps: int, warmup: int = 3) -> None:
    """`warmup` untimed rounds, then `reps` rounds; in each round every series runs once, and
    the order rotates so no series always follows the same one."""
    n = len(series)
    for r in range(warmup + reps):
        for k in range(n):
            s = series[(r + k) % n]
            elapsed = s.step()
            if r >= warmup:
                s.samples_ns.append(elapsed)


GNU_TIME = "/usr/bin/time"


def rss_run(argv: Sequence[str], stdin: bytes | None = None,
            env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Run `argv` (stdout discarded) and return (elapsed ns, its peak RSS in KiB).

    The peak is the child's ru_maxrss from wait4, taken by GNU time (Debian's `time`), a 1 MB C
    program, rather than by this process: the kernel keeps the largest RSS a process had across
    its exec, and a child forked (or vforked) from this 25 MB interpreter starts with this
    interpreter's pages counted, so os.wait4 here would report our size, not the child's."""
    with tempfile.NamedTemporaryFile() as out:
        t0 = time.perf_counter_ns()
        proc = subprocess.run([GNU_TIME, "-f", "%M", "-o", out.name, *argv], input=stdin,
                              env=env, check=False, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        elapsed = time.perf_counter_ns() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
        return elapsed, int(out.read().split()[-1])


def timed_run(argv: Sequence[str], stdin: bytes | None = None, env: Mapping[str, str] | None = None,
              cwd: str | None = None, expect_rc: int | None = 0) -> Step:
    """A step that runs `argv` (stdout/stderr discarded) and times it from fork to reap."""
    def step() -> int:
        t0 = time.perf_counter_ns()
        proc = subprocess.run(argv, input=stdin, env=env, cwd=cwd, check=False,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter_ns() - t0
        if expect_rc is not None and proc.returncode != expect_rc:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
        return elapsed
    return step


@dataclass
class Result:
    """One measurement's outcome, as printed and as written to JSON."""

    key: str
    title: str
    series: dict[str, dict[str, float]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # ratio, delta, counts ...
    target: str = ""
    met: bool | None = None
    skipped: str = ""  # why it did not run
    notes: list[str] = field(default_factory=list)
    # One line per target of the measurement: (name, target, the figure it is judged on, met).
    checks: list[tuple[str, str, str, bool]] = field(default_factory=list)

    def check(self, name: str, target: str, figure: str, met: bool) -> None:
        """Record one target's verdict; the result is met when every check is."""
        self.checks.append((name, target, figure, met))
        self.met = all(c[3] for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "series": self.series, "figures": self.figures,
                "target": self.target, "met": self.met, "skipped": self.skipped,
                "notes": self.notes,
                "checks": [{"name": n, "target": t, "figure": f, "met": m}
                           for n, t, f, m in self.checks]}


def ratio(a: Mapping[str, float], b: Mapping[str, float], stat: str = "median") -> float:
    return a[stat] / b[stat]


def table(result: Result) -> str:
    head = f"== {result.key}: {result.title}"
    if result.skipped:
        return f"{head}\n   not run: {result.skipped}"
    lines = [head]
    if result.series:
        lines.append(f"   {'series':<44} {'n':>4} {'min':>8} {'median':>8} {'p95':>8} "
                     f"{'p99':>8}  (ms)")
    for name, st in result.series.items():
        lines.append(f"   {name:<44} {int(st['n']):>4} {st['min']:>8.2f} {st['median']:>8.2f} "
                     f"{st['p95']:>8.2f} {st['p99']:>8.2f}")
    for k, v in result.figures.items():
        if isinstance(v, list):
            lines.append(f"   {k}:")
            lines.extend(f"      {item}" for item in v)
        else:
            lines.append(f"   {k}: {v:.3f}" if isinstance(v, float) else f"   {k}: {v}")
    for name, target, figure, met in result.checks:
        lines.append(f"   target {name}: {target}: {figure} -> {'met' if met else 'NOT MET'}")
    if result.target and not result.checks:
        verdict = {True: "MET", False: "NOT MET", None: "n/a"}[result.met]
        lines.append(f"   target: {result.target} -> {verdict}")
    lines.extend(f"   note: {n}" for n in result.notes)
    return "\n".join(lines)
