"""Convert a cryptofeed-style capture into the project's recording format.

``python -m ledgerflux.testing.convert IN OUT [--max-frames N]``

The capture format (one frame per line) is::

    <endpoint> <-> <connect unix seconds>          a (re)connection
    <endpoint> <- <unix seconds>: <frame>          a frame the client sent
    <unix seconds>: <frame>                        a frame the client received

It is how ``recordings/coinbase/exchange-reference-2021.jsonl.gz`` was made from the
reference capture of Coinbase's Exchange feed (see recordings/README.md). Timestamps are
converted exactly (decimal seconds to integer ns); frames are kept verbatim.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path

import attrs
import orjson

from ledgerflux.recording import RecordedFrame, RecordingHeader, RecordingWriter

__all__ = ["CaptureError", "convert", "main", "parse_capture"]

_NS = Decimal(1_000_000_000)
EXCHANGE_REST = "https://api.exchange.coinbase.com"


class CaptureError(ValueError):
    """A capture line that cannot be parsed; names the file and line."""


@attrs.frozen
class _Connect:
    endpoint: str
    ts: int


def _ns(text: str, where: str) -> int:
    try:
        return int(Decimal(text.strip()) * _NS)
    except InvalidOperation:
        raise CaptureError(f"{where}: bad timestamp {text!r}") from None


def parse_capture(path: Path) -> Iterator[_Connect | RecordedFrame]:
    """The capture's connections and frames, in file order."""
    conn = -1
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            where = f"{path}:{lineno}"
            if not line.strip():
                continue
            if " <-> " in line:
                endpoint, _, ts = line.partition(" <-> ")
                conn += 1
                yield _Connect(endpoint, _ns(ts, where))
                continue
            head, sep, raw = line.partition(": ")
            if not sep:
                raise CaptureError(f"{where}: expected '<ts>: <frame>'")
            direction: str = "in"
            if " <- " in head:
                head = head.partition(" <- ")[2]
                direction = "out"
            yield RecordedFrame(
                ts=_ns(head, where),
                dir="out" if direction == "out" else "in",
                conn=max(conn, 0),
                raw=raw,
            )


def convert(
    src: Path,
    dst: Path,
    *,
    max_frames: int | None = None,
    plugin: str = "coinbase",
    rest_endpoint: str | None = EXCHANGE_REST,
) -> int:
    """Convert the capture ``src`` into the recording ``dst``; returns frames written.

    The header's symbols and channels are read from the client's subscribe frames.
    ``max_frames`` keeps only the first N received frames (sent frames are always kept).
    """
    endpoint = ""
    created_ns = 0
    symbols: dict[str, None] = {}
    channels: dict[str, None] = {}
    for item in parse_capture(src):
        if isinstance(item, _Connect):
            if not endpoint:
                endpoint, created_ns = item.endpoint, item.ts
            continue
        if item.dir == "out":
            try:
                message = orjson.loads(item.raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, dict):
                symbols.update(dict.fromkeys(message.get("product_ids", [])))
                for channel in message.get("channels", []):
                    name = channel.get("name") if isinstance(channel, dict) else channel
                    if isinstance(name, str):
                        channels[name] = None
    header = RecordingHeader(
        plugin=plugin,
        endpoint=endpoint,
        rest_endpoint=rest_endpoint,
        symbols=tuple(symbols),
        channels=tuple(channels),
        created_ns=created_ns,
        note=f"converted from {src.name} by ledgerflux.testing.convert"
        + (f" (first {max_frames} received frames)" if max_frames is not None else ""),
    )
    received = 0
    with RecordingWriter(dst, header) as writer:
        for item in parse_capture(src):
            if isinstance(item, _Connect):
                continue
            if item.dir == "in":
                if max_frames is not None and received >= max_frames:
                    continue
                received += 1
            writer.write(item)
        return writer.frames


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ledgerflux.testing.convert",
        description="Convert a cryptofeed-style capture into a LedgerFlux recording.",
    )
    parser.add_argument("src", type=Path, help="capture file")
    parser.add_argument("dst", type=Path, help="recording to write (.jsonl or .jsonl.gz)")
    parser.add_argument(
        "--max-frames", type=int, default=None, help="keep only the first N received frames"
    )
    parser.add_argument("--plugin", default="coinbase", help="plugin name for the header")
    args = parser.parse_args(argv)
    frames = convert(args.src, args.dst, max_frames=args.max_frames, plugin=args.plugin)
    print(f"{args.dst}: {frames} frames")


if __name__ == "__main__":
    main()
