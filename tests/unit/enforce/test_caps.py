"""gpuhook.enforce.caps leaves a child exactly the capabilities asked for, as the kernel reports
them in /proc/self/status (the same sets python-prctl's wrapper would leave)."""

from __future__ import annotations

import os

import pytest

from gpuhook.enforce import caps

CAP_DAC_OVERRIDE, CAP_MKNOD = 1, 27


def _in_child(work: str) -> dict[str, int]:
    """Run caps calls in a forked child; the child's capability sets and flags."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            if work == "hook":
                caps.no_new_privs()
                caps.limit("mknod", "dac_override")
            elif work == "ldconfig":
                caps.die_with_parent()
                caps.no_new_privs()
                caps.limit("dac_override", bounding=True, inheritable=True)
            else:
                caps.limit("no_such_cap")
            with open("/proc/self/status") as f:
                os.write(w, f.read().encode())
        except ValueError as e:
            os.write(w, f"ValueError: {e}".encode())
        except BaseException:
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    assert os.waitpid(pid, 0)[1] == 0
    if text.startswith("ValueError"):
        raise ValueError(text)
    return {k: int(v, 16) if k.startswith("Cap") else int(v) for k, v in (
        line.split(":\t", 1) for line in text.splitlines()
        if line.startswith(("Cap", "NoNewPrivs")))}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a child must hold capabilities to "
                                               "drop them")
def test_the_hook_child_keeps_only_mknod_and_dac_override() -> None:
    before = _in_child("hook")
    want = 1 << CAP_MKNOD | 1 << CAP_DAC_OVERRIDE
    assert (before["CapEff"], before["CapPrm"], before["NoNewPrivs"]) == (want, want, 1)
    assert before["CapBnd"] != want, "the bounding set is not touched without bounding=True"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a child must hold capabilities to "
                                               "drop them")
def test_the_ldconfig_child_keeps_dac_override_in_every_set_and_no_inheritable() -> None:
    got = _in_child("ldconfig")
    want = 1 << CAP_DAC_OVERRIDE
    assert (got["CapEff"], got["CapPrm"], got["CapBnd"], got["CapInh"]) == (want, want, want, 0)
    assert got["NoNewPrivs"] == 1


def test_an_unknown_capability_name_is_refused_before_any_change() -> None:
    with pytest.raises(ValueError, match="Unknown capability: no_such_cap"):
        _in_child("unknown")
