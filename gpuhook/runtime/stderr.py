"""One line to stderr that can never fail the caller.

The runtime's stdio may be /dev/null opened read-only (containerd's NullIO for pause sandboxes
and `ctr run --null-io`: go-runc's NewNullIO uses os.Open), so a write gives EBADF. Through
sys.stderr that error would escape, or surface at exit as status 120, and replace the real exit
code and message; here it is dropped, after the message went to the runtime's --log."""

import os


def write_stderr(line: str) -> None:
    data = (line if line.endswith("\n") else line + "\n").encode("utf-8", "replace")
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass
