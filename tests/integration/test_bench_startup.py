"""``ledgerflux bench startup``: a smoke run (the pipeline up, one daemon killed and
restarted) that prints the agreed JSON shape (no speed assertion: speed belongs in the
benchmark's own output)."""

from __future__ import annotations

import orjson
import pytest
import trio

from ledgerflux.bench.startup import main

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]


async def test_startup_bench_times_a_daemon_restart_to_ready_next_to_its_baseline(
    nats_url: str, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--json", "--rounds", "1", "--daemons", "normalize", "--warmup-s", "0.5"]
    argv += ["--nats-url", nats_url, "--database-url", database_url]
    with trio.fail_after(120):
        assert await trio.to_thread.run_sync(main, argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("normalize  restart to ready in ") for line in out)
    summary = orjson.loads(out[-1])
    assert summary["bench"] == "startup"
    assert set(summary["metrics"]) == {
        "normalize_ready_p50_ms",
        "normalize_ready_cpu_p50_ms",
        "normalize_imports_p50_ms",
    }
    assert set(summary["baseline"]) == {"import_p50_ms", "import_cpu_p50_ms"}
    assert set(summary["ratio"]) == set(summary["metrics"])
    assert all(value > 0 for value in summary["metrics"].values())
    # The import mark is a step of the start, logged by the daemon itself.
    assert (
        summary["metrics"]["normalize_imports_p50_ms"]
        < summary["metrics"]["normalize_ready_p50_ms"]
    )
