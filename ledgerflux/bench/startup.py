"""``ledgerflux bench startup``: how long a split-mode daemon takes to become ready.

For each daemon (``normalize --shard 0``, ``snapshot``, ``gateway``, ``ingest`` with the
replay feed) the bench starts ``python -m ledgerflux DAEMON`` ``--rounds`` times against
servers that already run (``--nats-url``/``--database-url``, else an embedded nats-server
and PostgreSQL started once, before any clock), and measures from the exec to the first
``200`` of its ``/readyz``: that is what a restart costs an operator. It also reads the
process's CPU time at that moment (``/proc``), which is what stretches on a loaded machine.

The baseline is the floor any Python daemon pays: ``python -c 'import trio, nats'`` run to
completion, in wall time and CPU time. ``ratio`` = daemon / baseline, median of the rounds.
With ``--json`` the last line printed is one JSON object (DESIGN §12).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from ledgerflux.bench import print_summary

__all__ = ["DAEMONS", "main"]

DAEMONS: dict[str, list[str]] = {
    "normalize": ["normalize", "--shard", "0"],
    "snapshot": ["snapshot"],
    "gateway": ["gateway"],
    "ingest": ["ingest", "--feed", "replay"],
}
READY_TIMEOUT_S = 120.0
_POLL_S = 0.02
_DEMO = Path(__file__).resolve().parents[2] / "recordings" / "demo.jsonl.gz"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _time_to_ready(args: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) from exec to the first 200 of /readyz."""
    port = _free_port()
    env = env | {"LEDGERFLUX_HEALTH_PORT": str(port), "LEDGERFLUX_GATEWAY__PORT": str(port)}
    url = f"http://127.0.0.1:{port}/readyz"
    with log.open("wb") as out, httpx.Client(timeout=1.0) as client:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledgerflux", *args], env=env, stdout=out, stderr=out
        )
        try:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get(url).status_code == 200:
                        return time.monotonic() - start, _cpu_s(proc.pid)
                if proc.poll() is not None:
                    raise RuntimeError(f"{args[0]} exited {proc.returncode}: {log.read_text()}")
                if time.monotonic() - start > READY_TIMEOUT_S:
                    raise RuntimeError(f"{args[0]} not ready within {READY_TIMEOUT_S} s")
                time.sleep(_POLL_S)
        finally:
            proc.terminate()
            proc.wait()


def _baseline() -> tuple[float, float]:
    start = time.monotonic()
    before = os.times()
    subprocess.run([sys.executable, "-c", "import trio, nats"], check=True)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return time.monotonic() - start, cpu


@contextlib.contextmanager
def _servers(nats_url: str | None, database_url: str | None) -> Iterator[tuple[str, str]]:
    if nats_url and database_url:
        yield nats_url, database_url
        return
    with tempfile.TemporaryDirectory(prefix="lf-bench-startup-") as folder:
        ready = Path(folder) / "urls"
        # The servers in a child process of their own, so their start is not timed and
        # their CPU is not ours.
        code = (
            "import sys, trio\n"
            "from pathlib import Path\n"
            "from ledgerflux.embedded.nats import open_nats_server\n"
            "from ledgerflux.embedded.postgres import open_postgres\n"
            "async def main():\n"
            "    d = Path(sys.argv[1])\n"
            "    async with open_nats_server(d) as n, open_postgres(d) as pg:\n"
            "        Path(sys.argv[2]).write_text(n.url + '\\n' + pg.url)\n"
            "        await trio.sleep_forever()\n"
            "trio.run(main)\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, folder, str(ready)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the embedded servers did not start")
                time.sleep(0.05)
            nats, pg = ready.read_text().split("\n")
            yield nats_url or nats, database_url or pg
        finally:
            proc.send_signal(2)  # SIGINT: the servers stop cleanly
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ledgerflux bench startup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print a JSON line last")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--daemons", default=",".join(DAEMONS), help="comma-separated")
    parser.add_argument("--nats-url", default=None)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    names = [name for name in args.daemons.split(",") if name]
    unknown = [name for name in names if name not in DAEMONS]
    if args.rounds < 1 or unknown or not names:
        parser.error(f"--rounds must be >= 1 and --daemons a subset of {', '.join(DAEMONS)}")
    metrics: dict[str, float | None] = {}
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(args.rounds):
        wall, cpu = _baseline()
        walls.append(wall)
        cpus.append(cpu)
    baseline = {
        "import_p50_ms": round(statistics.median(walls) * 1000, 1),
        "import_cpu_p50_ms": round(statistics.median(cpus) * 1000, 1),
    }
    ratio: dict[str, float | None] = {}
    with (
        _servers(args.nats_url, args.database_url) as (nats_url, database_url),
        tempfile.TemporaryDirectory(prefix="lf-bench-startup-data-") as data_dir,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLUX_")}
        env |= {
            "LEDGERFLUX_NATS_URL": nats_url,
            "LEDGERFLUX_DATABASE_URL": database_url,
            "LEDGERFLUX_DATA_DIR": data_dir,
            "LEDGERFLUX_INGEST__REPLAY_PATH": str(_DEMO),
            "LEDGERFLUX_INGEST__REPLAY_LOOP": "true",
        }
        for name in names:
            results = [
                _time_to_ready(DAEMONS[name], env, Path(data_dir) / f"{name}.log")
                for _ in range(args.rounds)
            ]
            wall_ms = round(statistics.median(r[0] for r in results) * 1000, 1)
            cpu_ms = round(statistics.median(r[1] for r in results) * 1000, 1)
            metrics[f"{name}_ready_p50_ms"] = wall_ms
            metrics[f"{name}_ready_cpu_p50_ms"] = cpu_ms
            ratio[f"{name}_ready_p50_ms"] = round(wall_ms / baseline["import_p50_ms"], 2)
            ratio[f"{name}_ready_cpu_p50_ms"] = round(cpu_ms / baseline["import_cpu_p50_ms"], 2)
            print(
                f"{name:<10} ready in {wall_ms:7.1f} ms (median of {args.rounds}),"
                f" {cpu_ms:6.1f} ms of CPU"
            )
    print(
        f"baseline   python -c 'import trio, nats': {baseline['import_p50_ms']:.1f} ms,"
        f" {baseline['import_cpu_p50_ms']:.1f} ms of CPU"
    )
    load = os.getloadavg()[0]
    print(f"load average {load:.2f} on {os.cpu_count()} cpus (wall time stretches with it)")
    if args.json:
        print_summary("startup", metrics=metrics, baseline=baseline, ratio=ratio)
    return 0
