"""Capabilities and prctl flags for gpuhook's children, through `_prctl`: the C interface of
python-prctl. Its Python wrapper (`prctl`) imports `signal` (with `enum`) and builds a property
per capability at import, about 4 ms of every hook that applies a plan; these four calls are all
gpuhook needs of it. Each raises OSError as `prctl` does."""

from __future__ import annotations

import _prctl  # type: ignore[import-not-found]

SIGKILL = 9  # signal.SIGKILL on Linux, without importing `signal`
# Every capability the kernel headers python-prctl was built with know, as numbers.
ALL_CAPS = tuple(range(_prctl.CAP_LAST_CAP + 1))


def _numbers(names: tuple[str, ...]) -> set[int]:
    """`("mknod", "dac_override")` -> their numbers; an unknown name is a ValueError."""
    out = set()
    for name in names:
        number = getattr(_prctl, "CAP_" + name.upper(), None)
        if not isinstance(number, int) or number not in ALL_CAPS:
            raise ValueError(f"Unknown capability: {name}")
        out.add(number)
    return out


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG SIGKILL: the child never outlives the process that forked it."""
    _prctl.prctl(_prctl.PR_SET_PDEATHSIG, SIGKILL)


def no_new_privs() -> None:
    _prctl.prctl(_prctl.PR_SET_NO_NEW_PRIVS, 1)


def limit(*keep: str, bounding: bool = False, inheritable: bool = False) -> None:
    """Keep only `keep` in the effective and permitted sets (as `prctl.cap_effective.limit`
    and `prctl.cap_permitted.limit`); with `bounding` also in the bounding set, with
    `inheritable` clear the inheritable set."""
    kept = _numbers(keep)
    drop = [c for c in ALL_CAPS if c not in kept]
    if bounding:
        for cap in drop:
            _prctl.prctl(_prctl.PR_CAPBSET_DROP, cap)
    # set_caps(effective on, permitted on, inheritable on, effective off, permitted off,
    # inheritable off): python-prctl's set_caps after its argument parsing.
    _prctl.set_caps([], [], [], drop, drop, list(ALL_CAPS) if inheritable else [])
