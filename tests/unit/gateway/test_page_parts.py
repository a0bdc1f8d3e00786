"""The live page's script (ledgerflux/gateway/page.html) collects book parts before it
replaces its book. Run in Node with a minimal DOM and WebSocket stand-in (skipped without
node; tests/browser/test_page.py renders the page in Chromium)."""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
from typing import Any

import pytest

NODE = shutil.which("node")

HARNESS = """
const elements = {};
function element(id) {
  return {id, textContent: "", children: [], dataset: {},
          replaceChildren(...c) { this.children = c; }, append(x) { this.children.push(x); }};
}
const document = {
  getElementById: (id) => (elements[id] ||= element(id)),
  createElement: () => element(""),
};
const location = {search: "?product=coinbase:BTC-USD", protocol: "http:", host: "page.test"};
const sockets = [];
class WebSocket { constructor() { sockets.push(this); } send() {} }
function setTimeout() {}
function setInterval() {}
const fetch = undefined;
%s
const out = [];
for (const frame of JSON.parse(require("fs").readFileSync(0, "utf8"))) {
  sockets[0].onmessage({data: JSON.stringify(frame)});
  out.push({
    bids: $("bids").children.map((tr) => tr.children.map((td) => td.textContent)),
    seq: String($("seq").textContent),
    incomplete: String($("incomplete").textContent || 0),
  });
}
console.log(JSON.stringify(out));
"""


def run_page(frames: list[Any]) -> list[dict[str, Any]]:
    assert NODE is not None
    page = importlib.resources.files("ledgerflux.gateway").joinpath("page.html").read_text()
    match = re.search(r"<script>(.*)</script>", page, re.S)
    assert match is not None
    done = subprocess.run(
        [NODE, "-e", HARNESS % match.group(1)],
        input=json.dumps(frames),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def book(seq: int, bids: list[list[str]], **extra: Any) -> dict[str, Any]:
    return {
        "type": "book", "product": "coinbase:BTC-USD", "seq": seq, "epoch": "e1",
        "src_seq": None, "ts_event": 1, "ts_ingest": 1, "snapshot": True,
        "bids": bids, "asks": [], **extra,
    }  # fmt: skip


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_the_page_replaces_its_book_only_when_the_last_part_arrives() -> None:
    frames = [
        book(1, [["100", "1"]]),
        book(2, [["99", "2"]], part=0, parts=3),
        book(2, [["98", "3"]], part=1, parts=3),
        book(2, [["97", "4"]], part=2, parts=3),
    ]
    states = run_page(frames)
    assert [s["bids"] for s in states] == [
        [["100", "1", "1"]],
        [["100", "1", "1"]],
        [["100", "1", "1"]],
        [["99", "2", "2"], ["98", "3", "5"], ["97", "4", "9"]],
    ]
    assert [s["seq"] for s in states] == ["1", "1", "1", "2"]
    assert states[-1]["incomplete"] == "0"


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_the_page_drops_parts_that_do_not_continue_and_counts_them() -> None:
    snapshot_part = {
        "type": "snapshot", "product": "coinbase:BTC-USD", "seq": 5, "epoch": "e1",
        "ts_event": 1, "quote": None, "trade": None, "ticker": None, "status": None,
    }  # fmt: skip
    frames = [
        book(1, [["100", "1"]]),
        book(2, [["99", "2"]], part=0, parts=2),
        book(3, [["50", "9"]], part=1, parts=2),  # another seq: the collection is dropped
        [
            {**snapshot_part, "book": {"bids": [["10", "1"]], "asks": []}, "part": 0, "parts": 2},
            {**snapshot_part, "book": {"bids": [["9", "2"]], "asks": []}, "part": 1, "parts": 2},
        ],
    ]
    states = run_page(frames)
    assert [s["bids"] for s in states] == [
        [["100", "1", "1"]],
        [["100", "1", "1"]],
        [["100", "1", "1"]],
        [["10", "1", "1"], ["9", "2", "3"]],
    ]
    assert [s["incomplete"] for s in states] == ["0", "0", "1", "1"]
