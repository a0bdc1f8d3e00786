"""A toy chain-style exchange for the grown plugin API: diffs carry ``U``/``u`` update ids
(``SequenceModel.UPDATE_ID_CHAIN``), no WebSocket snapshot (``rest_book_channels``), an
optional book checksum (``cs``: the sum of the top-2 level prices and sizes, as an int)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar

import orjson

from ledgerflux.events import Book, PriceLevel, Trade, make_product
from ledgerflux.plugin import (
    BookChecksum,
    BookSnapshot,
    Credentials,
    Decoded,
    DecodeError,
    RestRequest,
    ResyncMode,
    SeqMark,
    SequenceModel,
    Subscription,
)

TS = 1_795_000_000_000_000_000


def toy_checksum(bids: Sequence[PriceLevel], asks: Sequence[PriceLevel]) -> int:
    return int(sum(p + s for p, s in (*bids[:2], *asks[:2])) * 1000)


def _levels(raw: Any) -> tuple[PriceLevel, ...]:
    return tuple((Decimal(p), Decimal(s)) for p, s in raw)


class ChainDecoder:
    def decode(self, frame: bytes | str, ts_ingest: int) -> Decoded:
        raw = frame.encode() if isinstance(frame, str) else frame
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Decoded(errors=(DecodeError("malformed_json", str(exc), raw),))
        product = make_product("chain", obj["s"])
        if obj["e"] == "depth":
            book = Book(
                product=product,
                src_seq=obj["u"],
                ts_event=obj["E"],
                ts_ingest=ts_ingest,
                snapshot=False,
                bids=_levels(obj["b"]),
                asks=_levels(obj["a"]),
            )
            checks = (BookChecksum(product, obj["cs"]),) if "cs" in obj else ()
            mark = SeqMark(product, obj["u"], first=obj["U"])
            return Decoded(events=(book,), marks=(mark,), checksums=checks)
        trade = Trade(
            product=product,
            src_seq=obj["t"],
            ts_event=obj["E"],
            ts_ingest=ts_ingest,
            price=Decimal(obj["p"]),
            size=Decimal(obj["q"]),
            side="buy",
            trade_id=str(obj["t"]),
        )
        return Decoded(events=(trade,))


class ChainToyFeed:
    name: ClassVar[str] = "chain"
    exchange: ClassVar[str] = "chain"
    endpoint: ClassVar[str] = "ws://127.0.0.1:9/chain"
    rest_endpoint: ClassVar[str | None] = "http://chain.invalid"
    channels: ClassVar[tuple[str, ...]] = ("depth", "trade")
    default_channels: ClassVar[tuple[str, ...]] = ("depth", "trade")
    sequence_model: ClassVar[SequenceModel] = SequenceModel.UPDATE_ID_CHAIN
    resync_mode: ClassVar[ResyncMode] = ResyncMode.REST
    subscribe_deadline_s: ClassVar[float] = 5.0
    stale_after_s: ClassVar[float] = 10.0
    rest_rate_limit_per_s: ClassVar[float] = 10.0
    needs_credentials: ClassVar[frozenset[str]] = frozenset()
    rest_book_channels: ClassVar[frozenset[str]] = frozenset({"depth"})

    def subscribe_messages(
        self, subscription: Subscription, credentials: Credentials | None, now_s: float
    ) -> Sequence[str]:
        return [orjson.dumps({"subscribe": list(subscription.symbols)}).decode()]

    def new_decoder(self) -> ChainDecoder:
        return ChainDecoder()

    def book_request(self, symbol: str) -> RestRequest | None:
        return RestRequest(url=f"{self.rest_endpoint}/depth", params={"symbol": symbol})

    def parse_book(self, symbol: str, body: bytes, ts_ingest: int) -> BookSnapshot:
        obj = orjson.loads(body)
        book = Book(
            product=make_product("chain", symbol),
            ts_event=ts_ingest,
            ts_ingest=ts_ingest,
            snapshot=True,
            bids=_levels(obj["bids"]),
            asks=_levels(obj["asks"]),
        )
        return BookSnapshot(book=book, src_seq=obj["lastUpdateId"])


class ChecksumToyFeed(ChainToyFeed):
    name: ClassVar[str] = "chain-cs"
    book_depth: ClassVar[int] = 3

    def book_checksum(self, bids: Sequence[PriceLevel], asks: Sequence[PriceLevel]) -> int:
        return toy_checksum(bids, asks)


def depth(symbol: str, first: int, last: int, bids: Any = (), asks: Any = (), **extra: Any) -> str:
    body = {"e": "depth", "E": TS + last, "s": symbol, "U": first, "u": last}
    body |= {"b": [list(b) for b in bids], "a": [list(a) for a in asks], **extra}
    return orjson.dumps(body).decode()


def trade(symbol: str, trade_id: int) -> str:
    body = {"e": "trade", "E": TS + trade_id, "s": symbol, "t": trade_id, "p": "100", "q": "1"}
    return orjson.dumps(body).decode()


def rest_book(last_update_id: int, bids: Any, asks: Any) -> bytes:
    body = {"lastUpdateId": last_update_id, "bids": bids, "asks": asks}
    return orjson.dumps(body)
