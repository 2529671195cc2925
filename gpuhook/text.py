"""Text that came from outside gpuhook, made safe to print and to parse.

`escape` is the one place where container text (env keys and values, ids, paths, the
container id) is made fit for one line of stderr, of runc's error, or of the log: anything
that is not printable (C0/C1 controls, DEL, line and paragraph separators, bidi overrides,
lone surrogates, unassigned code points) becomes a visible escape, so one message stays one
line and reads the same on every terminal. `decimal` is the one ASCII-digit check:
`str.isdigit()` also accepts `²` and `٣`, which `int()` then refuses or reads as another
number. `mountinfo_unescape` reads the kernel's \\ooo escapes in mountinfo fields. None of these
imports anything: the hook's fast path may use them. `re_fullmatch` and
`re_match` import `re` (~3 ms with `enum`) only when called: for the rare forms (old MIG ids,
PCI bus ids, legacy CUDA versions, CDI names) that a common start never parses.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re

MAX_DIGITS = 18  # a decimal field in a host file or an id: below 2**63, far below int's limit


def escape(text: str, limit: int | None = None) -> str:
    """`text` with every non-printable character written as \\xNN, \\uNNNN or \\UNNNNNNNN;
    cut to `limit` characters first (with a note of how many were cut) when given."""
    cut = ""
    if limit is not None and len(text) > limit:
        cut = f"...(+{len(text) - limit} chars)"
        text = text[:limit]
    if text.isprintable():
        return text + cut
    return "".join(c if c.isprintable() else _escape_char(c) for c in text) + cut


def _escape_char(c: str) -> str:
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def decimal(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """The value of `text` if it is 1..max_digits ASCII digits, else None (never raises)."""
    if not text or len(text) > max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def re_fullmatch(pattern: str, text: str) -> "re.Match[str] | None":
    import re

    return re.fullmatch(pattern, text)


def re_match(pattern: str, text: str) -> "re.Match[str] | None":
    import re

    return re.match(pattern, text)


_OCTAL3 = frozenset(f"{n:03o}" for n in range(0o400))


def mountinfo_unescape(field: str) -> str:
    """A /proc/<pid>/mountinfo field as the kernel meant it: it writes space, tab, newline and
    backslash as \\ooo (three octal digits); anything else stays as it is."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4] in _OCTAL3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
