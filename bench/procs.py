"""Child processes of a benchmark run: the sim, the contenders, CPU pinning, /proc readings."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        uv = f"yes ({importlib.metadata.version('uvloop')})"
    except importlib.metadata.PackageNotFoundError:
        uv = "no"
    versions = {}
    for mod in ("aiohttp", "msgspec", "orjson", "pyarrow"):
        with contextlib.suppress(ImportError):
            versions[mod] = __import__(mod).__version__
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "uvloop": uv,
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


def cpus() -> tuple[int, int]:
    """(sim CPU, client CPU): two different cores when there are two, else the same one."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) > 1 else (allowed[0], allowed[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def move_children(pid: int, cpu: int, done: set[int]) -> set[int]:
    """Pin the children of ``pid`` not in ``done`` to ``cpu``; the pids pinned."""
    moved: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in done:
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                os.sched_setaffinity(int(entry.name), {cpu})
                moved.add(int(entry.name))
        except (OSError, ValueError):
            continue
    return moved


def spawn(
    argv: Sequence[str], *, cpu: int, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` pinned to ``cpu`` (stdout/stderr to ``log``), in its own process group."""
    out: IO[bytes] | int = log.open("wb") if log is not None else subprocess.DEVNULL
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    # Pinned right after the fork: Python is still starting, no thread exists yet.
    with contextlib.suppress(OSError):
        os.sched_setaffinity(proc.pid, {cpu})
    return proc


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 30.0) -> int:
    """SIGTERM, wait, then SIGKILL the process group if it does not go."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


@dataclass
class Sim:
    """A running ``ingestd.sim`` (one capture, one speed)."""

    proc: subprocess.Popen[bytes]
    rest: str
    ws: str
    speed: float
    log: Path
    cpu_marks: list[float] = field(default_factory=list)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def close(self) -> None:
        stop(self.proc)


def start_sim(
    capture: Path,
    *,
    speed: float,
    cpu: int,
    log: Path,
    timeout: float = 180.0,
    tls: tuple[Path, Path] | None = None,
) -> Sim:
    """Start the sim and wait for its ready line (``rest=… ws=…``). ``tls``: ``(certificate,
    key)`` to serve ``https://`` and ``wss://``."""
    argv = [sys.executable, "-m", "ingestd.sim.cli", "--capture", str(capture), "--speed", f"{speed:g}"]
    if tls is not None:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    proc = spawn(argv, cpu=cpu, log=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the sim exited with {proc.returncode}: {log.read_text()[-2000:]}")
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("rest="):
                rest, ws = (part.split("=", 1)[1] for part in line.split())
                return Sim(proc, rest, ws, speed, log)
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"the sim was not ready within {timeout:g} s")


def get_json(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """GET ``url`` as JSON; ``None`` when it cannot be read (not up yet, shutting down)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            doc = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def side_python(cache: Path, name: str, packages: Sequence[str], log: Path) -> tuple[Path | None, str]:
    """The interpreter of ``bench/.cache/<name>-venv`` holding ``packages`` (created on first use
    with pip), and the first package's version; or ``None`` and why it could not be made."""
    venv = cache / f"{name}-venv"
    py = venv / "bin" / "python"
    mods = ", ".join(p.replace("-", "_") for p in packages)
    code = f"import {mods}; from importlib.metadata import version; print(version({packages[0]!r}))"
    check = [str(py), "-c", code]
    if py.exists():
        done = subprocess.run(check, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return py, done.stdout.strip()
    with log.open("w") as out:
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(py), "-m", "pip", "install", "-q", *packages],
        ]
        for step in steps:
            ran = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False)
            if ran.returncode != 0:
                tail = log.read_text()[-800:].strip()
                return None, f"`{' '.join(step[-len(packages) - 2 :])}` failed ({ran.returncode}): {tail}"
    final = subprocess.run(check, capture_output=True, text=True, check=False)
    if final.returncode != 0:
        return None, f"{packages[0]} installed but does not import: {final.stderr.strip()[-800:]}"
    return py, final.stdout.strip()
