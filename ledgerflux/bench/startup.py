"""``ledgerflux bench startup``: how long a split-mode daemon takes to be ready again.

The bench runs the split pipeline as separate processes (``gateway``, ``snapshot``,
``normalize --shard 0`` with one shard, ``ingest`` replaying ``recordings/demo.jsonl.gz`` in
a loop) against servers that already run (``--nats-url``/``--database-url``, else an
embedded nats-server and PostgreSQL started once, before any clock; ``--s3-endpoint`` for an
S3 archive), lets it run ``--warmup-s`` so LF_MD and PostgreSQL hold state, then, for each
daemon, ``--rounds`` times: ``kill -9`` of it and a start of a new one, timed from the exec
to the first ``200`` of its ``/readyz``, while the rest of the pipeline keeps running. That
is what a restart costs an operator. It also reads the process's CPU time at that moment
(``/proc``), which is what stretches on a loaded machine, and splits the wall time with the
daemon's own ``startup_s`` log marks: ``imports`` (exec until the daemon's modules are
loaded and its configuration read) and the rest (connecting, loading state, the daemon's own
start). Daemons read their bytecode from a cache in the bench's data dir, written by their
first start, as a deployed install does (``--no-pycache``: whatever the environment gives,
which with ``PYTHONDONTWRITEBYTECODE`` is every module compiled from source at every start).

The baseline is the floor any Python daemon pays: ``python -c 'import trio, nats'`` run to
completion, in wall time and CPU time. ``ratio`` = daemon / baseline, median of the rounds.
With ``--json`` the last line printed is one JSON object (docs/development.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import httpx
import orjson

from ledgerflux.bench import print_summary
from ledgerflux.bench.servers import helper_servers

__all__ = ["DAEMONS", "main"]

DAEMONS: dict[str, list[str]] = {
    "normalize": ["normalize", "--shard", "0"],
    "snapshot": ["snapshot"],
    "gateway": ["gateway"],
    "ingest": ["ingest", "--feed", "replay"],
}
START_ORDER = ("gateway", "snapshot", "normalize", "ingest")
"""Sinks first, as ``ledgerflux up`` nests them: every daemon finds its consumers running."""
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


@attrs.frozen
class Start:
    """One start of a daemon, measured."""

    wall_s: float
    cpu_s: float
    imports_s: float | None
    """Exec until the daemon's modules were imported (its ``startup_s`` log mark)."""


@attrs.define
class _Daemon:
    """One split-mode daemon of the bench's pipeline, restartable on the same port."""

    name: str
    env: dict[str, str]
    log: Path
    port: int = attrs.field(factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Start:
        """Start it and wait for /readyz 200; the measured start."""
        env = self.env | {
            "LEDGERFLUX_HEALTH_PORT": str(self.port),
            "LEDGERFLUX_GATEWAY__PORT": str(self.port),
        }
        url = f"http://127.0.0.1:{self.port}/readyz"
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out, httpx.Client(timeout=1.0) as client:
            start = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ledgerflux", *DAEMONS[self.name]],
                env=env,
                stdout=out,
                stderr=out,
            )
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get(url).status_code == 200:
                        wall, cpu = time.monotonic() - start, _cpu_s(self.proc.pid)
                        break
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited {self.proc.returncode}: {self.log.read_text()}"
                    )
                if time.monotonic() - start > READY_TIMEOUT_S:
                    raise RuntimeError(f"{self.name} not ready within {READY_TIMEOUT_S} s")
                time.sleep(_POLL_S)
        return Start(wall, cpu, self._imports_s(offset))

    def _imports_s(self, offset: int) -> float | None:
        """The ``imports`` mark of the ``ready`` log line written since *offset*; the line
        follows /readyz at once, so it is waited for briefly."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            with self.log.open("rb") as f:
                f.seek(offset)
                for line in f:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        record = orjson.loads(line)
                        if isinstance(record, dict) and record.get("event") == "ready":
                            marks = record.get("startup_s") or {}
                            value = marks.get("imports")
                            return float(value) if value is not None else None
            time.sleep(_POLL_S)
        return None

    def kill(self) -> None:
        """``kill -9``, as a crash would stop it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def _baseline(env: dict[str, str]) -> tuple[float, float]:
    start = time.monotonic()
    before = os.times()
    subprocess.run([sys.executable, "-c", "import trio, nats"], env=env, check=True)
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
    with helper_servers("lf-bench-startup-", READY_TIMEOUT_S) as helper:
        yield nats_url or helper.nats_url, database_url or helper.database_url


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
    parser.add_argument(
        "--warmup-s", type=float, default=5.0, help="pipeline run time before the first kill"
    )
    parser.add_argument(
        "--settle-s",
        type=float,
        default=1.0,
        help="pause after each restart",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed of the recording")
    parser.add_argument(
        "--s3-endpoint", default=None, help="archive to this S3 server (default: a local folder)"
    )
    parser.add_argument(
        "--no-pycache",
        action="store_true",
        help="keep the environment's bytecode setting (with PYTHONDONTWRITEBYTECODE and no"
        " compiled install, every start compiles its modules from source)",
    )
    args = parser.parse_args(argv)
    names = [name for name in args.daemons.split(",") if name]
    unknown = [name for name in names if name not in DAEMONS]
    if args.rounds < 1 or unknown or not names:
        parser.error(f"--rounds must be >= 1 and --daemons a subset of {', '.join(DAEMONS)}")
    metrics: dict[str, float | None] = {}
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
            "LEDGERFLUX_LOG_FORMAT": "json",
            "LEDGERFLUX_NORMALIZE__SHARDS": "1",
            "LEDGERFLUX_INGEST__REPLAY_PATH": str(_DEMO),
            "LEDGERFLUX_INGEST__REPLAY_LOOP": "true",
            "LEDGERFLUX_INGEST__REPLAY_SPEED": str(args.speed),
            # The recording is older than the default retention: keep its history.
            "LEDGERFLUX_DATABASE__HISTORY_RETENTION_DAYS": "36500",
        }
        if args.s3_endpoint:
            # The archive as the chaos suite runs it: the snapshotter's S3 client.
            env |= {
                "LEDGERFLUX_S3_ENDPOINT": args.s3_endpoint,
                "LEDGERFLUX_ARCHIVE__BUCKET": "ledgerflux-bench",
                "LEDGERFLUX_ARCHIVE__ACCESS_KEY_ID": "bench",
                "LEDGERFLUX_ARCHIVE__SECRET_ACCESS_KEY": "bench",
            }
        if not args.no_pycache:
            # As a deployed install: bytecode written once (by the first starts, before any
            # clock), read by every restart.
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(data_dir) / "pycache")
        # The baseline with the same bytecode setting as the daemons (its first run writes
        # the cache and is not timed).
        _baseline(env)
        walls: list[float] = []
        cpus: list[float] = []
        for _ in range(args.rounds):
            wall, cpu = _baseline(env)
            walls.append(wall)
            cpus.append(cpu)
        baseline = {
            "import_p50_ms": round(statistics.median(walls) * 1000, 1),
            "import_cpu_p50_ms": round(statistics.median(cpus) * 1000, 1),
        }
        daemons = {name: _Daemon(name, env, Path(data_dir) / f"{name}.log") for name in START_ORDER}
        try:
            for daemon in daemons.values():
                daemon.start()
            time.sleep(args.warmup_s)
            for name in names:
                results = []
                for _ in range(args.rounds):
                    daemons[name].kill()
                    results.append(daemons[name].start())
                    time.sleep(args.settle_s)
                wall_ms = round(statistics.median(r.wall_s for r in results) * 1000, 1)
                cpu_ms = round(statistics.median(r.cpu_s for r in results) * 1000, 1)
                marks = [r.imports_s for r in results if r.imports_s is not None]
                imports_ms = round(statistics.median(marks) * 1000, 1) if marks else None
                metrics[f"{name}_ready_p50_ms"] = wall_ms
                metrics[f"{name}_ready_cpu_p50_ms"] = cpu_ms
                metrics[f"{name}_imports_p50_ms"] = imports_ms
                ratio[f"{name}_ready_p50_ms"] = round(wall_ms / baseline["import_p50_ms"], 2)
                ratio[f"{name}_ready_cpu_p50_ms"] = round(cpu_ms / baseline["import_cpu_p50_ms"], 2)
                ratio[f"{name}_imports_p50_ms"] = (
                    None if imports_ms is None else round(imports_ms / baseline["import_p50_ms"], 2)
                )
                rest = "" if imports_ms is None else f" (imports {imports_ms:.1f} ms)"
                print(
                    f"{name:<10} restart to ready in {wall_ms:7.1f} ms{rest}"
                    f" (median of {args.rounds}), {cpu_ms:6.1f} ms of CPU",
                    flush=True,
                )
        finally:
            for name in reversed(START_ORDER):
                daemons[name].stop()
    print(
        f"baseline   python -c 'import trio, nats': {baseline['import_p50_ms']:.1f} ms,"
        f" {baseline['import_cpu_p50_ms']:.1f} ms of CPU"
    )
    bytecode = "compiled from source at every start" if args.no_pycache else "cached"
    print(f"bytecode   {bytecode}")
    load = os.getloadavg()[0]
    print(f"load average {load:.2f} on {os.cpu_count()} cpus (wall time stretches with it)")
    if args.json:
        print_summary("startup", metrics=metrics, baseline=baseline, ratio=ratio)
    return 0
