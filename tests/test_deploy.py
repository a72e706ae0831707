"""Deployment files: the systemd units carry the directives the daemon relies on (and
``systemd-analyze verify`` accepts them when it exists), and the Dockerfile's HEALTHCHECK command
really follows liveness (/healthz) of a running endpoint, not readiness (/readyz)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from ingestd.config import HealthSettings, Settings
from tests.ops import free_port

ROOT = Path(__file__).resolve().parents[1]
UNITS = (ROOT / "deploy" / "ingestd.service", ROOT / "deploy" / "ingestd@.service")


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections → key → values (a key may repeat), as systemd reads them (comments skipped)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        key, sep, val = line.partition("=")
        assert sep, f"{path.name}: not a Key=Value line: {raw!r}"
        assert section, f"{path.name}: {key} outside a section"
        out[section].setdefault(key.strip(), []).append(val.strip())
    return out


def _seconds(v: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", v)
    assert m, v
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_directives(path: Path) -> None:
    unit = parse_unit(path)
    assert set(unit) == {"Unit", "Service", "Install"}
    svc = {k: v[-1] for k, v in unit["Service"].items()}
    assert len(unit["Service"]["ExecStart"]) == 1
    assert svc["Type"] == "notify"
    assert svc["NotifyAccess"] == "main"
    assert svc["WatchdogSec"] == "30"
    assert svc["Restart"] == "on-failure"
    assert _seconds(svc["RestartSec"]) > 0
    assert svc["RestartPreventExitStatus"] == "2"  # config errors: restarting cannot help
    assert svc["KillSignal"] == "SIGTERM"
    assert _seconds(svc["TimeoutStopSec"]) > Settings().shutdown_timeout_s
    assert svc["ProtectSystem"] == "strict"
    assert svc["NoNewPrivileges"] == svc["PrivateTmp"] == svc["ProtectHome"] == "yes"
    assert svc["RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6", "AF_UNIX"]  # AF_UNIX: sd_notify
    assert svc["CapabilityBoundingSet"] == ""
    assert "User" in svc or svc.get("DynamicUser") == "yes"
    state = svc["StateDirectory"]
    assert svc["ReadWritePaths"] == f"/var/lib/{state}" == svc["WorkingDirectory"]
    exec_start = svc["ExecStart"].split()
    assert exec_start[0].endswith("/ingestd")
    assert exec_start[1] == "--config"
    if "@" in path.name:
        assert exec_start[2] == "/etc/ingestd/%i.yaml"
        assert state == "ingestd/%i"
    else:
        assert exec_start[2] == "/etc/ingestd/config.yaml"
        assert state == "ingestd"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["Unit"]["After"][0].split()


def test_template_and_unit_agree() -> None:
    """The template differs only in per-instance paths and names."""
    one, many = (parse_unit(p)["Service"] for p in UNITS)
    per_instance = {"ExecStart", "WorkingDirectory", "StateDirectory", "ReadWritePaths", "SyslogIdentifier"}
    assert {k: v for k, v in one.items() if k not in per_instance} == {
        k: v for k, v in many.items() if k not in per_instance
    }


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(path: Path, tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this environment's console script.
    exe = Path(sys.executable).with_name("ingestd")
    if not exe.exists():
        pytest.skip(f"no ingestd console script at {exe}")
    (tmp_path / path.name).write_text(path.read_text().replace("/usr/local/bin/ingestd", str(exe)))
    target = tmp_path / path.name.replace("@.", "@shard-1.")
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    # verify reports bad values and unknown keys as warnings with exit code 0: none allowed.
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def _healthcheck_command() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    m = re.search(r"^HEALTHCHECK (?P<opts>.*?)\\\n\s+CMD (?P<cmd>\[.*\])$", text, re.MULTILINE)
    assert m, "Dockerfile has no HEALTHCHECK … CMD [exec form]"
    opts = dict(re.findall(r"--([a-z-]+)=(\S+)", m.group("opts")))
    assert set(opts) == {"interval", "timeout", "start-period", "retries"}
    cmd = orjson.loads(m.group("cmd"))
    assert isinstance(cmd, list)
    assert cmd[0] == "python"
    assert "/healthz" in cmd[-1]  # liveness: a quiet or silent stream must not mark it unhealthy
    assert "/readyz" not in cmd[-1]
    return [str(c) for c in cmd]


async def _run(cmd: list[str], port: int) -> int:
    env = {**os.environ, "INGESTD_HEALTH__PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *cmd[1:], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), 30)


@pytest.mark.asyncio
async def test_docker_healthcheck_follows_healthz_not_readyz() -> None:
    """Healthy while /healthz answers 200, whatever /readyz says; a 503 or no answer fails."""
    cmd = _healthcheck_command()
    state = {"live": 200}

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"live": state["live"] == 200}, status=state["live"])

    async def readyz(_: web.Request) -> web.Response:  # a silent stream: never ready here
        return web.json_response({"ready": False, "not_ready": ["stream x: no frame yet"]}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        assert await _run(cmd, port) == 0
        state["live"] = 503
        assert await _run(cmd, port) != 0
    finally:
        await runner.cleanup()
    assert await _run(cmd, port) != 0  # nothing listening
    assert HealthSettings().port == 9108  # the check's default port is the daemon's default
    assert "'9108'" in cmd[-1]
