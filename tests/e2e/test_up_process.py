"""``ledgerflux up`` as an operator runs it: Ctrl-C in a terminal, ``kill -9``, exit codes.

A terminal sends SIGINT to its whole foreground process group, so each test starts ``up`` in
a process group of its own (as a shell starts a foreground job) and signals the group.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import termios
from pathlib import Path

import orjson
import pytest
import trio
from e2e_support import DEMO, ledgerflux_env

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]

EXIT_DRAIN_INCOMPLETE = 75


def processes_using(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (embedded servers, watchdogs)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            stat = (Path("/proc") / pid / "stat").read_text()
            cmdline = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if stat.rpartition(")")[2].split()[:1] == ["Z"]:
            continue  # dead, waiting to be reaped
        if str(path) in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


async def wait_gone(path: Path) -> None:
    # Polling: there is no event for the exit of processes that are not our children.
    while processes_using(path):  # noqa: ASYNC110
        await trio.sleep(0.1)


async def spawn_up(args: list[str], env: dict[str, str], log: Path) -> trio.Process:
    """``ledgerflux up`` in a new process group, as a terminal's foreground job."""
    with log.open("wb") as out:
        return await trio.lowlevel.open_process(
            [sys.executable, "-m", "ledgerflux", "up", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
        )


async def wait_up(proc: trio.Process, log: Path) -> None:
    while not re.search(r"websocket\s+ws://\S+/ws", log.read_text()):
        if proc.poll() is not None:
            raise AssertionError(f"up exited {proc.returncode}:\n{log.read_text()}")
        await trio.sleep(0.05)


async def kill_group(proc: trio.Process) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await proc.wait()


def up_env(data_dir: Path, **more: str) -> dict[str, str]:
    return ledgerflux_env(LEDGERFLUX_DATA_DIR=str(data_dir), **more)


UP_ARGS = ["--replay", str(DEMO), "--speed", "2", "--port", "0"]


async def test_ctrl_c_to_the_process_group_drains_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "up.log"
    proc = await spawn_up(UP_ARGS, up_env(data_dir), log)
    try:
        with trio.fail_after(120):
            await wait_up(proc, log)
            await trio.sleep(1.0)  # let events flow through every stage
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
            code = await proc.wait()
        text = log.read_text()
        assert code == 0, text
        assert "Traceback" not in text, text
        assert "ExceptionGroup" not in text, text
        assert "not acked" not in text, text
        assert "nats_server.stopped" in text, text
        with trio.fail_after(10):
            await wait_gone(data_dir)
    finally:
        await kill_group(proc)


async def test_kill_9_of_up_takes_the_embedded_servers_with_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "up.log"
    proc = await spawn_up(UP_ARGS, up_env(data_dir), log)
    try:
        with trio.fail_after(120):
            await wait_up(proc, log)
            assert any("postgres" in p for p in processes_using(data_dir))
            assert any("nats-server" in p for p in processes_using(data_dir))
            proc.kill()  # the app alone, as `kill -9 <pid>` does
            await proc.wait()
        with trio.fail_after(15):
            await wait_gone(data_dir)
    finally:
        await kill_group(proc)


async def test_drain_deadline_with_work_in_flight_exits_with_its_own_code(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "up.log"
    # Replay as fast as possible with a drain deadline far too short to flush it.
    env = up_env(data_dir, LEDGERFLUX_DRAIN_TIMEOUT_S="0.001")
    proc = await spawn_up(["--replay", str(DEMO), "--speed", "0", "--port", "0"], env, log)
    try:
        with trio.fail_after(120):
            await wait_up(proc, log)
            os.killpg(proc.pid, signal.SIGINT)
            code = await proc.wait()
        text = log.read_text()
        assert code == EXIT_DRAIN_INCOMPLETE, text
        assert "drain deadline" in text, text
        assert "Traceback" not in text, text
        with trio.fail_after(10):
            await wait_gone(data_dir)
    finally:
        await kill_group(proc)


async def test_ctrl_c_typed_in_a_real_terminal_drains_cleanly(tmp_path: Path) -> None:
    """The same through a pseudo-terminal: ``up`` is the foreground job of its own terminal
    and the test types Ctrl-C, so the kernel's terminal driver picks who gets SIGINT."""
    data_dir = tmp_path / "data"
    master, slave = os.openpty()

    def become_terminal_job() -> None:  # in the child, before exec
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    output = bytearray()

    async def read_until(pattern: bytes) -> None:
        while not re.search(pattern, output):
            try:
                chunk = await trio.to_thread.run_sync(os.read, master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                return
            if not chunk:
                return
            output.extend(chunk)

    try:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "ledgerflux", "up", *UP_ARGS],
            env=up_env(data_dir),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            preexec_fn=become_terminal_job,
        )
        os.close(slave)
        try:
            with trio.fail_after(120):
                await read_until(rb"websocket\s+ws://\S+/ws")
                assert proc.poll() is None, output.decode(errors="replace")
                await trio.sleep(1.0)
                os.write(master, b"\x03")  # Ctrl-C
                await read_until(rb"nats_server\.stopped")
                code = await proc.wait()
            text = output.decode(errors="replace")
            assert code == 0, text
            assert "Traceback" not in text, text
            assert "ExceptionGroup" not in text, text
            with trio.fail_after(10):
                await wait_gone(data_dir)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                with trio.CancelScope(shield=True):
                    await proc.wait()
    finally:
        os.close(master)


async def test_a_second_signal_stops_at_once_with_the_drain_incomplete_code(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "up.log"
    env = up_env(data_dir, LEDGERFLUX_DRAIN_TIMEOUT_S="60")
    proc = await spawn_up(["--replay", str(DEMO), "--speed", "0", "--port", "0"], env, log)
    try:
        with trio.fail_after(120):
            await wait_up(proc, log)
            os.killpg(proc.pid, signal.SIGINT)
            while "drain requested" not in log.read_text():  # noqa: ASYNC110
                await trio.sleep(0.02)
            # A second, different signal stops at once (the same one within SAME_REQUEST_S
            # is one Ctrl-C delivered twice: tests/integration/test_signals.py).
            os.killpg(proc.pid, signal.SIGTERM)
            code = await proc.wait()
        text = log.read_text()
        assert code == EXIT_DRAIN_INCOMPLETE, text
        assert "stopped at once by a second signal" in text, text
        assert "Traceback" not in text, text
        with trio.fail_after(10):
            await wait_gone(data_dir)
    finally:
        await kill_group(proc)


async def test_embedded_streams_from_an_older_version_are_a_clear_error(tmp_path: Path) -> None:
    from ledgerflux.bus import open_bus
    from ledgerflux.config import NatsConfig
    from ledgerflux.embedded.nats import open_nats_server

    data_dir = tmp_path / "data"
    with trio.fail_after(60):
        # Streams made with the limits of an external server (no embedded caps).
        async with open_nats_server(data_dir) as nats, open_bus(NatsConfig(), url=nats.url) as bus:
            await bus.ensure_streams()
    log = tmp_path / "up.log"
    proc = await spawn_up(UP_ARGS, up_env(data_dir), log)
    try:
        with trio.fail_after(120):
            code = await proc.wait()
        text = log.read_text()
        assert code == 1, text
        assert "stream LF_TICKS exists with a different config (max_bytes" in text, text
        assert f"remove {data_dir / 'nats'} to recreate them" in text, text
        assert "Traceback" not in text, text
        with trio.fail_after(10):
            await wait_gone(data_dir)
    finally:
        await kill_group(proc)


async def test_ctl_resync_finds_the_embedded_nats_of_up_on_its_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "up.log"
    proc = await spawn_up(UP_ARGS, up_env(data_dir), log)
    try:
        with trio.fail_after(120):
            await wait_up(proc, log)
            # No --nats-url: the embedded nats-server's random port comes from up's status.
            result = await trio.run_process(
                [sys.executable, "-m", "ledgerflux", "ctl", "resync", "coinbase:BTC-USD"],
                env=up_env(data_dir),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert result.returncode == 0, result.stderr.decode()
        reply = orjson.loads(result.stdout)
        assert reply["ok"] is True
        assert reply["product"] == "coinbase:BTC-USD"
    finally:
        await kill_group(proc)


async def test_ctl_resync_without_a_url_or_up_names_both(tmp_path: Path) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "ledgerflux", "ctl", "resync", "coinbase:BTC-USD"],
        env=up_env(tmp_path / "data"),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 1
    assert b"no NATS URL configured" in result.stderr
    assert b"no `ledgerflux up` answers on this data dir" in result.stderr
