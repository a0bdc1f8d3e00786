"""``ledgerflux import``: cryptofeed's raw-data captures as the project's recordings.

Two capture forms are read (the form is told by the first line):

* the older **text** files (``EXCHANGE.ws.N.0``): a header line (``configuration: ...``),
  then one line per event::

      <address> <-> <receipt ts>                 a (re)connection
      <address> <- <receipt ts>: <frame>         a frame the client sent
      <url> -> <receipt ts>: <body>              an HTTP reply (a REST book)
      <receipt ts>: <frame>                      a frame the client received

* the newer **JSON lines**: objects with ``t`` = ``header`` | ``connect`` | ``send`` |
  ``recv`` | ``http``, the receipt time ``ts`` in float seconds, the raw frame or body in
  ``data``, and ``conn`` naming the connection (``connect`` and ``http`` may name the
  address in ``url``, ``address`` or ``endpoint``).

Receipt times are read as decimals, never floats, so the recording keeps every digit the
capture holds (to the nanosecond). ``http`` replies become the recording's ``rest`` frames,
so a recorded depth snapshot is replayed as the REST answer. Every ``connect`` starts a new
recording connection number. Symbols and channels for the header come from the client's
subscribe frames (Coinbase ``product_ids``/``channels``; Binance ``SUBSCRIBE`` params or
the ``/stream?streams=`` address), unless given.

A line that cannot be read is a :class:`CaptureLineError` naming the file and line: nothing
is skipped silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import attrs
import orjson

from ledgerflux.errors import LedgerfluxError
from ledgerflux.recording import RecordedFrame, RecordingHeader, RecordingWriter
from ledgerflux.symbols import split_native

__all__ = ["CaptureLineError", "ImportStats", "import_capture", "read_capture"]

_NS = Decimal(1_000_000_000)
_QUOTES = ("USDT", "USDC", "FDUSD", "TUSD", "BUSD", "USD", "EUR", "GBP", "BTC", "ETH", "BNB")


class CaptureLineError(LedgerfluxError):
    """A capture line that cannot be read; the message names the file and the line."""


@attrs.frozen
class _Connect:
    address: str
    ts: int
    key: str


@attrs.frozen
class ImportStats:
    frames: int
    connections: int
    rest: int
    sent: int
    received: int
    form: Literal["text", "jsonl"]


def _ns(value: Any, where: str) -> int:
    """Receipt seconds (a decimal string, or a Decimal from the JSON parser) as int ns."""
    try:
        seconds = value if isinstance(value, Decimal) else Decimal(str(value).strip())
        if not seconds.is_finite():
            raise InvalidOperation
        return int(seconds * _NS)
    except (InvalidOperation, ValueError):
        raise CaptureLineError(f"{where}: bad receipt time {value!r:.40}") from None


def read_capture(path: Path) -> Iterator[_Connect | RecordedFrame]:
    """The capture's connections and frames in file order (either form)."""
    with open(path, encoding="utf-8") as f:
        first = ""
        for line in f:
            if line.strip():
                first = line
                break
    if first.lstrip().startswith("{"):
        yield from _read_jsonl(path)
    else:
        yield from _read_text(path)


def _read_text(path: Path) -> Iterator[_Connect | RecordedFrame]:
    conn = -1
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            where = f"{path}:{lineno}"
            if not line.strip():
                continue
            if lineno == 1 and not line[:1].isdigit() and " <-> " not in line:
                continue  # the header (configuration: ...)
            if " <-> " in line:
                address, _, ts = line.partition(" <-> ")
                conn += 1
                yield _Connect(address, _ns(ts, where), str(conn))
                continue
            head, sep, raw = line.partition(": ")
            if not sep:
                raise CaptureLineError(f"{where}: expected '<ts>: <frame>'")
            if " -> " in head:
                url, _, ts = head.partition(" -> ")
                yield RecordedFrame(
                    ts=_ns(ts, where), dir="rest", conn=max(conn, 0), raw=raw, url=url
                )
            elif " <- " in head:
                yield RecordedFrame(
                    ts=_ns(head.partition(" <- ")[2], where), dir="out", conn=max(conn, 0), raw=raw
                )
            else:
                yield RecordedFrame(ts=_ns(head, where), dir="in", conn=max(conn, 0), raw=raw)


def _read_jsonl(path: Path) -> Iterator[_Connect | RecordedFrame]:
    numbers: dict[str, int] = {}
    """Capture connection name → recording connection number (its latest connect)."""
    count = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if not line.strip():
                continue
            try:
                obj = json.loads(line, parse_float=Decimal)
            except ValueError as exc:
                raise CaptureLineError(f"{where}: not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise CaptureLineError(f"{where}: expected a JSON object")
            kind = obj.get("t")
            if kind == "header":
                continue
            if kind not in ("connect", "send", "recv", "http"):
                raise CaptureLineError(f"{where}: unknown line type t={kind!r}")
            ts = _ns(obj.get("ts"), where)
            key = str(obj.get("conn", ""))
            address = obj.get("url") or obj.get("address") or obj.get("endpoint")
            if kind == "connect":
                numbers[key] = count
                count += 1
                yield _Connect(str(address or obj.get("data") or ""), ts, key)
                continue
            data = obj.get("data")
            if not isinstance(data, str):
                raise CaptureLineError(f"{where}: field 'data' must be the raw text")
            number = numbers.get(key)
            if number is None:  # frames before any connect line: one implicit connection
                number = numbers[key] = count
                count += 1
            if kind == "http":
                if not isinstance(address, str):
                    raise CaptureLineError(f"{where}: an http line needs its url")
                yield RecordedFrame(ts=ts, dir="rest", conn=number, raw=data, url=address)
            else:
                direction: Literal["in", "out"] = "out" if kind == "send" else "in"
                yield RecordedFrame(ts=ts, dir=direction, conn=number, raw=data)


def _subscribed(raw: str, address: str) -> tuple[list[str], list[str]]:
    """(symbols, channels) a subscribe frame (or a combined-stream address) asks for."""
    symbols: list[str] = []
    channels: list[str] = []
    streams = dict(parse_qsl(urlsplit(address).query)).get("streams", "")
    params: list[Any] = streams.split("/") if streams else []
    try:
        message = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        message = None
    if isinstance(message, dict):
        symbols.extend(s for s in message.get("product_ids", []) if isinstance(s, str))
        for channel in message.get("channels", []):
            name = channel.get("name") if isinstance(channel, dict) else channel
            if isinstance(name, str):
                channels.append(name)
        if message.get("method") == "SUBSCRIBE" and isinstance(message.get("params"), list):
            params.extend(message["params"])
    for param in params:
        if not isinstance(param, str) or "@" not in param:
            continue
        native, _, stream = param.partition("@")
        split = split_native(native, _QUOTES)
        if split is not None:
            symbols.append(f"{split[0]}-{split[1]}")
        channels.append(stream.removesuffix("@100ms"))
    return symbols, channels


def import_capture(
    src: Path,
    dst: Path,
    *,
    plugin: str,
    rest_endpoint: str | None = None,
    symbols: tuple[str, ...] | None = None,
    channels: tuple[str, ...] | None = None,
    note: str = "",
) -> ImportStats:
    """Convert the capture ``src`` into the recording ``dst`` for ``plugin``.

    Reads the capture twice (header facts first, then the frames), so it streams: memory
    stays flat whatever the capture's size. Raises :class:`CaptureLineError`.
    """
    src, dst = Path(src), Path(dst)
    endpoint, created_ns = "", 0
    found_symbols: dict[str, None] = {}
    found_channels: dict[str, None] = {}
    form: Literal["text", "jsonl"] = "text"
    with open(src, encoding="utf-8") as f:
        if next((line for line in f if line.strip()), "").lstrip().startswith("{"):
            form = "jsonl"
    last_address = ""
    for item in read_capture(src):
        if isinstance(item, _Connect):
            last_address = item.address
            if not endpoint:
                endpoint, created_ns = item.address, item.ts
            s, c = _subscribed("", item.address)
            found_symbols.update(dict.fromkeys(s))
            found_channels.update(dict.fromkeys(c))
        elif item.dir == "out":
            s, c = _subscribed(item.raw, last_address)
            found_symbols.update(dict.fromkeys(s))
            found_channels.update(dict.fromkeys(c))
        if not created_ns and isinstance(item, RecordedFrame):
            created_ns = item.ts
    header = RecordingHeader(
        plugin=plugin,
        endpoint=endpoint,
        rest_endpoint=rest_endpoint,
        symbols=symbols if symbols is not None else tuple(found_symbols),
        channels=channels if channels is not None else tuple(found_channels),
        created_ns=created_ns,
        note=note or f"imported from the cryptofeed capture {src.name} ({form})",
    )
    counts = {"in": 0, "out": 0, "rest": 0}
    connections = 0
    with RecordingWriter(dst, header) as writer:
        for item in read_capture(src):
            if isinstance(item, _Connect):
                connections += 1
                continue
            counts[item.dir] += 1
            writer.write(item)
        frames = writer.frames
    return ImportStats(
        frames=frames,
        connections=connections,
        rest=counts["rest"],
        sent=counts["out"],
        received=counts["in"],
        form=form,
    )
