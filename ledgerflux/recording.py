"""The project's recording format: raw exchange traffic, replayable (docs/recordings.md).

A recording is a JSON-lines file (gzip-compressed when its name ends in ``.gz``). The first
line is a :class:`RecordingHeader`; every further line is one :class:`RecordedFrame`::

    {"plugin":"coinbase","endpoint":"wss://...","rest_endpoint":"https://...",
     "symbols":["BTC-USD"],"channels":["ticker"],"created_ns":1795...,"note":"",
     "format":"ledgerflux.recording/1"}
    {"ts":1795...,"dir":"out","conn":0,"raw":"{\\"type\\":\\"subscribe\\",...}","url":null}
    {"ts":1795...,"dir":"in","conn":0,"raw":"{\\"type\\":\\"ticker\\",...}","url":null}

Frames are kept verbatim (``raw`` is the exact text received or sent) so that a decoder can
be replayed against exactly what the exchange said, including its mistakes.

Reading streams: :func:`iter_frames` never holds more than one line in memory, so a
recording of any length can be replayed.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeAlias

import attrs
import cattrs
import orjson
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.orjson import make_converter as _make_orjson_converter

from ledgerflux.errors import LedgerfluxError

__all__ = [
    "FORMAT",
    "Direction",
    "RecordedFrame",
    "RecordingError",
    "RecordingHeader",
    "RecordingWriter",
    "iter_frames",
    "read_header",
]

FORMAT = "ledgerflux.recording/1"
"""The format identifier in every header. A reader refuses any other value."""

Direction: TypeAlias = Literal["in", "out", "rest"]


@attrs.frozen
class RecordingHeader:
    """The first line of a recording: what was recorded, from where, and when."""

    plugin: str
    """Entry-point name of the feed plugin that can decode the frames, e.g. ``coinbase``."""
    endpoint: str
    rest_endpoint: str | None
    symbols: tuple[str, ...]
    channels: tuple[str, ...]
    created_ns: int
    note: str = ""
    format: str = FORMAT
    native_symbols: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    """The exchange's id for each canonical symbol (``BTC-USDT`` → ``BTCUSDT``), where it
    differs; empty when they are the same."""


@attrs.frozen
class RecordedFrame:
    """One frame of traffic."""

    ts: int
    """Receipt (or send) time, ns since the Unix epoch."""
    dir: Direction
    """``in``: a received WebSocket frame; ``out``: a frame the client sent; ``rest``: the
    body of a REST reply (``url`` holds the request URL including its query)."""
    conn: int
    """Connection number within the recording; a reconnect starts a new one."""
    raw: str
    """The frame text or REST body, verbatim."""
    url: str | None = None


class RecordingError(LedgerfluxError):
    """A recording that cannot be read; the message names the file, the line and the fault."""

    def __init__(self, path: Path | str, line: int, what: str) -> None:
        super().__init__(f"{path}:{line}: {what}")
        self.path = Path(path)
        self.line = line
        self.what = what


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {type(value).__name__}: {value!r}")
    return value


def _structure_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}: {value!r}")
    return value


def _make_converter() -> cattrs.Converter:
    """Converter for header and frame lines: strict types, no unknown keys."""
    conv = _make_orjson_converter()
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(str, _structure_str)
    for cls in (RecordingHeader, RecordedFrame):
        conv.register_structure_hook(
            cls, make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)
        )
    # Written only when there is one: recordings without native ids stay byte-identical.
    conv.register_unstructure_hook(
        RecordingHeader,
        make_dict_unstructure_fn(
            RecordingHeader, conv, native_symbols=override(omit_if_default=True)
        ),
    )
    return conv


_converter = _make_converter()


class _GzipOwningFile(gzip.GzipFile):
    """A GzipFile that also closes the file object it was given."""

    def __init__(self, raw: IO[bytes], mode: str) -> None:
        # No file name and mtime=0 in the gzip header: generated recordings are then
        # byte-for-byte reproducible, whatever they are named and whenever made.
        super().__init__(filename="", fileobj=raw, mode=mode, mtime=0)
        self._owned = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._owned.close()


def _open_text(path: Path, mode: Literal["r", "w"]) -> IO[str]:
    if path.name.endswith(".gz"):
        gz = _GzipOwningFile(open(path, mode + "b"), mode + "b")  # noqa: SIM115
        return io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
    return open(path, mode, encoding="utf-8", newline="\n")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(_describe(sub) for sub in exc.exceptions) or str(exc)
    if isinstance(exc, KeyError):
        return f"missing field {exc}"
    return str(exc)


def _parse(path: Path, lineno: int, line: str, cls: type[Any]) -> Any:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise RecordingError(path, lineno, f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordingError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    try:
        return _converter.structure(obj, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise RecordingError(path, lineno, f"invalid {cls.__name__}: {_describe(exc)}") from None


def _check_header(path: Path, header: RecordingHeader) -> RecordingHeader:
    if header.format != FORMAT:
        raise RecordingError(path, 1, f"unsupported format {header.format!r}, want {FORMAT!r}")
    return header


def read_header(path: Path) -> RecordingHeader:
    """The header (first line) of the recording at ``path``. Raises :class:`RecordingError`."""
    path = Path(path)
    try:
        with _open_text(path, "r") as f:
            first = f.readline()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise RecordingError(path, 1, f"cannot read: {exc}") from None
    if not first.strip():
        raise RecordingError(path, 1, "empty recording: no header line")
    header: RecordingHeader = _parse(path, 1, first, RecordingHeader)
    return _check_header(path, header)


def iter_frames(path: Path) -> Iterator[RecordedFrame]:
    """Every frame of the recording at ``path``, in file order, one line at a time.

    Checks the header, then yields frames. Raises :class:`RecordingError` at the first bad
    line (blank lines are skipped).
    """
    path = Path(path)
    lineno = 0
    try:
        with _open_text(path, "r") as f:
            for lineno, line in enumerate(f, start=1):
                if lineno == 1:
                    if not line.strip():
                        raise RecordingError(path, 1, "empty recording: no header line")
                    _check_header(path, _parse(path, 1, line, RecordingHeader))
                    continue
                if not line.strip():
                    continue
                frame: RecordedFrame = _parse(path, lineno, line, RecordedFrame)
                if frame.dir not in ("in", "out", "rest"):
                    raise RecordingError(path, lineno, f"invalid dir {frame.dir!r}")
                yield frame
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise RecordingError(path, lineno + 1, f"cannot read: {exc}") from None
    if lineno == 0:
        raise RecordingError(path, 1, "empty recording: no header line")


class RecordingWriter:
    """Writes a recording: the header at once, then one line per :meth:`write`.

    Gzip-compressed when ``path`` ends in ``.gz``. Use as a context manager; the file is
    complete (and, for ``.gz``, a valid gzip stream) only after :meth:`close`.
    """

    def __init__(self, path: Path, header: RecordingHeader) -> None:
        self.path = Path(path)
        self.header = header
        self.frames = 0
        self._file: IO[str] | None = _open_text(self.path, "w")
        self._line(_converter.unstructure(header, RecordingHeader))

    def _line(self, obj: Any) -> None:
        if self._file is None:
            raise ValueError(f"recording {self.path} is closed")
        self._file.write(orjson.dumps(obj).decode("utf-8"))
        self._file.write("\n")

    def write(self, frame: RecordedFrame) -> None:
        self._line(_converter.unstructure(frame, RecordedFrame))
        self.frames += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
