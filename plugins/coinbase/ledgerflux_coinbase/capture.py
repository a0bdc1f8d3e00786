"""Reader for the cryptofeed-style capture files used as reference traffic.

Format (see the reference README)::

    <endpoint> <-> <unix seconds>          a connection; the frames after it belong to it
    <endpoint> <- <unix seconds>: <frame>  a frame the client sent
    <unix seconds>: <frame>                a frame the client received

Timestamps become integer ns exactly (parsed as decimal text, not float). The project's
own recording format and its converter are :mod:`ledgerflux.recording` and
:mod:`ledgerflux.testing.convert`; this reader only serves the plugin's own tests and
benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import attrs

__all__ = ["CaptureFormatError", "CaptureFrame", "parse_capture_line", "read_capture"]


class CaptureFormatError(ValueError):
    """A capture line that does not follow the format; names the line number."""


@attrs.frozen
class CaptureFrame:
    direction: Literal["sent", "received"]
    ts_ns: int
    """Receipt (or send) time, ns since the Unix epoch."""
    frame: str
    line: int
    """1-based line number in the capture, for error messages."""
    conn: int = 0
    """Connection number: each ``<->`` line starts a new one (a decoder is per connection)."""


def _seconds_to_ns(text: str) -> int:
    whole, _, frac = text.strip().partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > 9:
        raise ValueError(f"not a unix timestamp: {text!r}")
    return int(whole) * 1_000_000_000 + int(frac.ljust(9, "0") or "0")


def _is_connect(text: str) -> bool:
    return " <-> " in text.split(": ", 1)[0]


def parse_capture_line(text: str, line: int, conn: int = 0) -> CaptureFrame | None:
    """One line → a frame; ``None`` for a connection line (``<->``) and blank lines."""
    text = text.rstrip("\r\n")
    if not text.strip() or _is_connect(text):
        return None
    head, sep, frame = text.partition(": ")
    if not sep:
        raise CaptureFormatError(f"line {line}: no ': ' separator")
    direction: Literal["sent", "received"] = "received"
    if " <- " in head:
        direction = "sent"
        head = head.rpartition(" <- ")[2]
    try:
        ts_ns = _seconds_to_ns(head)
    except ValueError as exc:
        raise CaptureFormatError(f"line {line}: {exc}") from None
    return CaptureFrame(direction=direction, ts_ns=ts_ns, frame=frame, line=line, conn=conn)


def read_capture(path: str | Path) -> Iterator[CaptureFrame]:
    """Every frame of a capture file, in file order. Raises CaptureFormatError."""
    conn = -1
    with Path(path).open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if _is_connect(text):
                conn += 1
                continue
            frame = parse_capture_line(text, number, max(conn, 0))
            if frame is not None:
                yield frame
