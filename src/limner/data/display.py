"""How the data layer shows file names: one printable line, whatever bytes the name holds.

Names come from ``os.fsdecode`` (PEP 383 surrogateescape), so an undecodable byte is a lone
surrogate that would crash ``print``; newlines and other control characters would forge report
lines (ComfyUI ``test_names_not_utf8.py`` exercises the same cases).
"""

from __future__ import annotations


def escape_path(path: str) -> str:
    """Printable, one-line form of a path: undecodable bytes as \\xNN, control characters escaped."""
    out = []
    for ch in path:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape stand-in for a non-UTF-8 byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)
