"""The Docker image, built and run: what ``make docker-check`` and ``tests/test_docker.py`` do.

1. ``docker build --network host`` the repository's Dockerfile (no bridge network is needed: the
   build reaches PyPI through the host's network, the containers talk over 127.0.0.1);
2. read the image's user (not root) and its HEALTHCHECK (liveness: ``/healthz``);
3. ``ingestd sim`` in one container, replaying the bundled real capture (at 10x, see SIM_SPEED);
4. ingestd in another, on a fresh named volume for ``/data``, pointed at the sim;
5. wait until ``/status`` shows every record of the capture counted per channel and the Parquet
   queue empty (the capture is finite: a condition, not a fixed sleep);
6. wait until Docker reports the container ``healthy``, and run the HEALTHCHECK's command with
   ``docker exec`` too;
7. ``docker stop`` → exit code 0;
8. copy ``/data`` out as a tar stream (``docker cp``, which keeps the owners): every file and
   directory belongs to the image's non-root uid, and the Parquet holds every trade of the
   capture (count, trade ids and fields) and every book ticker and depth diff.

One line per step on stdout; the first failure raises :class:`CheckError` naming what went
wrong (with the end of the container's log). Containers and the volume are always removed; the
image stays (its layers are the next build's cache). Run ``python -m tests.docker_check``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingestd.sim.venue import BUNDLED_CAPTURE
from tests.e2e import capture_frames, read_channel, stored_counts
from tests.ops import free_port

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = "trade,book_ticker,depth_diff"
"""What the bundled capture holds (USDⓈ-M BTCUSDT: trades, book tickers, depth diffs)."""
SIM_SPEED = 10
"""The sim replays the capture's 346 s at 10x: frames still flow when the first health probes run
(one --interval, 15 s, after the start). Liveness wants intake progress, and a finished capture
is a venue gone silent, so the probe must not depend on what liveness makes of that."""
MS = 1_000_000
LOG_TAIL = 30
"""Lines of a container's log quoted in an error."""


class CheckError(RuntimeError):
    """One step of the check failed; the message says which and why."""


def docker(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; a non-zero exit raises :class:`CheckError` with its stderr when ``check``."""
    try:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CheckError(f"docker {' '.join(args[:2])}: no answer in {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        raise CheckError(f"docker {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def engine_unavailable() -> str | None:
    """Why no docker engine can be used here, or ``None`` when ``docker info`` answers."""
    try:
        proc = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except FileNotFoundError:
        return "the docker CLI is not installed"
    except subprocess.TimeoutExpired:
        return "docker info did not answer in 30 s"
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines() or ["no output"]
        return f"no docker engine answers (docker info: {lines[-1]})"
    return None


def wait_until(what: str, cond: Callable[[], bool], timeout: float, poll: float = 0.5) -> None:
    """Poll ``cond`` until it holds; :class:`CheckError` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise CheckError(f"{what}: not reached in {timeout:.0f} s")
        time.sleep(poll)


def log_tail(container: str) -> str:
    proc = docker("logs", "--tail", str(LOG_TAIL), container, check=False)
    text = (proc.stdout + proc.stderr).strip()
    return f"\n--- last lines of {container}'s log ---\n{text}" if text else ""


def status(port: int) -> dict[str, Any] | None:
    """The daemon's ``/status`` JSON, or ``None`` while the endpoint does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:  # 503 while not ready still carries the JSON
        body = exc.read()
    except (urllib.error.URLError, OSError):
        return None
    data = json.loads(body)
    return data if isinstance(data, dict) else None


def running(container: str) -> bool:
    return docker("inspect", "--format", "{{.State.Running}}", container).stdout.strip() == "true"


class Check:
    """One run of the check; :meth:`run` does every step, :meth:`cleanup` removes what it made."""

    def __init__(self, image: str, say: Callable[[str], None]) -> None:
        self.image = image
        self.say = say
        tag = f"{int(time.time())}-{secrets.token_hex(3)}"
        self.sim = f"ingestd-check-sim-{tag}"
        self.daemon = f"ingestd-check-{tag}"
        self.volume = f"ingestd-check-data-{tag}"
        self.image_id = ""
        self.made: list[tuple[str, str]] = []
        self.t0 = time.monotonic()

    def step(self, text: str) -> None:
        """One line per step, with the seconds since the check began."""
        self.say(f"docker-check [{time.monotonic() - self.t0:5.1f} s] {text}")

    def run(self) -> None:
        """Every step in order; raises :class:`CheckError` on the first failure."""
        self.t0 = time.monotonic()
        self.build()
        uid = self.image_user()
        health_cmd = self.healthcheck()
        frames = capture_frames(BUNDLED_CAPTURE)
        expected = {
            "trade": len(frames["trade"]),
            "book_ticker": len(frames["bookTicker"]),
            "depth_diff": len(frames["depth"]),
            "depth_snapshot": len(frames["snapshot"]),
        }
        rest, ws = self.start_sim()
        port = self.start_daemon(rest, ws)
        self.wait_stored(port, expected)
        self.wait_healthy(health_cmd)
        self.stop()
        self.log_clean()
        with tempfile.TemporaryDirectory(prefix="ingestd-docker-check-") as tmp:
            data = Path(tmp) / "data"
            self.copy_out(data, uid)
            self.verify(data, frames, expected)
        self.step("passed")

    def build(self) -> None:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            iid = Path(tmp) / "iid"
            # --iidfile: the containers run exactly this build, even if another run retags the image.
            proc = docker(
                "build", "--network", "host", "--iidfile", str(iid), "-t", self.image, str(ROOT),
                timeout=1800, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-LOG_TAIL:])
                raise CheckError(
                    f"docker build failed (exit {proc.returncode}); without a registry, run "
                    f"`bash deploy/docker-python-base.sh` first for the python:3.11-slim base\n{tail}"
                )
            self.image_id = iid.read_text().strip()
        size = int(docker("image", "inspect", "--format", "{{.Size}}", self.image_id).stdout)
        self.step(
            f"built {self.image} ({self.image_id.removeprefix('sha256:')[:12]}, "
            f"{size / 1e6:.0f} MB) in {time.monotonic() - t0:.0f} s"
        )

    def image_user(self) -> int:
        user = docker("image", "inspect", "--format", "{{.Config.User}}", self.image_id).stdout.strip()
        uid_text = docker(
            "run", "--rm", "--network", "none", "--entrypoint", "id", self.image_id, "-u"
        ).stdout.strip()
        if not user or not uid_text.isdigit() or int(uid_text) == 0:
            raise CheckError(f"the image must run as a non-root user: USER {user!r}, uid {uid_text!r}")
        self.step(f"image runs as {user} (uid {uid_text})")
        return int(uid_text)

    def healthcheck(self) -> list[str]:
        raw = docker("image", "inspect", "--format", "{{json .Config.Healthcheck}}", self.image_id).stdout
        spec = json.loads(raw) or {}
        test = spec.get("Test") or []
        if not test or test[0] != "CMD" or "/healthz" not in test[-1] or "/readyz" in test[-1]:
            raise CheckError(f"the HEALTHCHECK must ask liveness (/healthz) in exec form, found {test}")
        self.step("HEALTHCHECK asks /healthz (liveness)")
        return [str(t) for t in test[1:]]

    def start_sim(self) -> tuple[str, str]:
        sim_port = free_port()
        self.made.append(("container", self.sim))
        docker(
            "run", "-d", "--name", self.sim, "--network", "host", "--no-healthcheck",
            self.image_id, "sim", "--host", "127.0.0.1", "--port", str(sim_port), "--speed", str(SIM_SPEED),
        )  # fmt: skip
        ready: list[str] = []

        def printed() -> bool:
            proc = docker("logs", self.sim, check=False)
            ready.extend(line for line in proc.stdout.splitlines() if line.startswith("rest="))
            if not ready and not running(self.sim):
                raise CheckError(f"the sim container exited before its ready line{log_tail(self.sim)}")
            return bool(ready)

        wait_until(f"the sim's ready line (container {self.sim})", printed, timeout=120)
        fields = dict(part.split("=", 1) for part in ready[0].split())
        self.step(f"sim container up: {ready[0]}")
        return fields["rest"], fields["ws"]

    def start_daemon(self, rest: str, ws: str) -> int:
        self.made.append(("volume", self.volume))
        docker("volume", "create", self.volume)
        port = free_port()
        self.made.append(("container", self.daemon))
        docker(
            "run", "-d", "--name", self.daemon, "--network", "host",
            "-v", f"{self.volume}:/data", "-e", f"INGESTD_HEALTH__PORT={port}", "--stop-timeout", "60",
            self.image_id,
            "--rest-url", rest, "--ws-url", ws, "--symbols", "BTCUSDT", "--channels", CHANNELS,
        )  # fmt: skip
        self.step(f"ingestd container up: volume {self.volume} on /data, health on 127.0.0.1:{port}")
        return port

    def wait_stored(self, port: int, expected: dict[str, int]) -> None:
        """Until the metrics tap counted every record of the capture per channel (so the bus
        published them: a clock sample also counts as published, a plain total could stop one
        record short) and the Parquet consumer's queue is empty."""
        last: dict[str, Any] = {}

        def done() -> bool:
            if not running(self.daemon):
                raise CheckError(f"the ingestd container exited while ingesting{log_tail(self.daemon)}")
            snap = status(port)
            if snap is None:
                return False
            consumers = snap.get("bus", {}).get("consumers", {})
            seen = consumers.get("metrics", {}).get("records_per_channel", {})
            parquet = consumers.get("parquet", {})
            last.update(seen=seen, parquet={k: parquet.get(k) for k in ("put", "got", "depth")})
            return all(seen.get(ch, 0) >= n for ch, n in expected.items()) and parquet.get("depth", 1) == 0

        try:
            wait_until("every record of the capture published and taken by Parquet", done, timeout=300)
        except CheckError as exc:
            raise CheckError(f"{exc}; want {expected}, /status: {last}{log_tail(self.daemon)}") from None
        self.step(f"ingestd took all {sum(expected.values())} records of the capture (/status)")

    def wait_healthy(self, health_cmd: list[str]) -> None:
        state = {"health": ""}

        def healthy() -> bool:
            state["health"] = docker(
                "inspect", "--format", "{{.State.Health.Status}}", self.daemon
            ).stdout.strip()
            if state["health"] == "unhealthy":
                raise CheckError(f"Docker marked the container unhealthy{log_tail(self.daemon)}")
            return state["health"] == "healthy"

        # The first probe runs one --interval (15 s) after the start; 3 min is ample on a busy box.
        try:
            wait_until("Health.Status healthy", healthy, timeout=180)
        except CheckError as exc:
            raise CheckError(f"{exc} (last: {state['health'] or 'none'}){log_tail(self.daemon)}") from None
        proc = docker("exec", self.daemon, *health_cmd, check=False)
        if proc.returncode != 0:
            raise CheckError(
                f"the HEALTHCHECK command via docker exec: exit {proc.returncode}: {proc.stderr}"
            )
        self.step("Health.Status healthy, and the HEALTHCHECK command exits 0 via docker exec")

    def stop(self) -> None:
        """``docker stop`` (SIGTERM) the daemon, then the sim: both must exit 0."""
        for container, what in ((self.daemon, "ingestd"), (self.sim, "the sim")):
            t0 = time.monotonic()
            docker("stop", "--time", "60", container, timeout=120)
            code = docker("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip()
            if code != "0":
                raise CheckError(f"docker stop: {what} exited with {code}, want 0{log_tail(container)}")
            self.step(f"docker stop {what}: exit code 0 after {time.monotonic() - t0:.1f} s")

    def log_clean(self) -> None:
        """The daemon's JSON log holds no ERROR or CRITICAL line, and it logged its stop."""
        proc = docker("logs", self.daemon)
        levels: dict[str, int] = {}
        bad: list[str] = []
        stopped = False
        for line in (proc.stdout + proc.stderr).splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # the console summary line is plain text
            if not isinstance(entry, dict):
                continue
            level = str(entry.get("level", ""))
            levels[level] = levels.get(level, 0) + 1
            if level in ("ERROR", "CRITICAL"):
                bad.append(line)
            stopped = stopped or str(entry.get("msg", "")).startswith("stopped in")
        if bad:
            raise CheckError(f"ingestd logged {len(bad)} error lines:\n" + "\n".join(bad[:10]))
        if not stopped:
            raise CheckError(f"ingestd's log has no 'stopped in' line{log_tail(self.daemon)}")
        counts = ", ".join(f"{n} {level}" for level, n in sorted(levels.items()))
        self.step(f"ingestd's log: no error, a clean stop ({counts})")

    def copy_out(self, dest: Path, uid: int) -> None:
        """``docker cp`` /data out as tar; every member must belong to ``uid``."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        others: list[str] = []
        files = 0
        with subprocess.Popen(
            ["docker", "cp", f"{self.daemon}:/data", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as proc:
            assert proc.stdout is not None
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    if member.uid != uid:
                        others.append(f"{member.name} (uid {member.uid})")
                    files += member.isfile()
                    tar.extract(member, dest.parent, filter="data")
            err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0:
            raise CheckError(f"docker cp {self.daemon}:/data: exit {proc.returncode}: {err.strip()}")
        if others:
            raise CheckError(f"files under /data not owned by uid {uid}: {', '.join(others[:10])}")
        self.step(f"copied /data out: {files} files, all owned by uid {uid}")

    def verify(self, data: Path, frames: dict[str, list[dict[str, Any]]], expected: dict[str, int]) -> None:
        counts = stored_counts(data)
        wrong = {ch: (counts.get(ch, 0), n) for ch, n in expected.items() if counts.get(ch, 0) != n}
        if wrong:
            raise CheckError(f"stored rows per channel differ from the capture (stored, capture): {wrong}")
        rows = read_channel(data, "trade").sort_by("trade_id").to_pylist()
        want = sorted(frames["trade"], key=lambda d: d["t"])
        for row, d in zip(rows, want, strict=True):
            got = (row["trade_id"], row["price"], row["qty"], row["is_buyer_maker"], row["exchange_ts"])
            if got != (d["t"], float(d["p"]), float(d["q"]), d["m"], d["E"] * MS):
                raise CheckError(f"stored trade {got} differs from the capture's {d}")
        self.step(
            f"Parquet holds every trade of the capture ({len(want)}, ids {want[0]['t']}..{want[-1]['t']}, "
            f"fields equal), {expected['book_ticker']} book tickers, {expected['depth_diff']} depth diffs, "
            "the depth snapshot"
        )

    def cleanup(self) -> None:
        """Remove the containers and the volume this run made (never raises)."""
        for kind, name in reversed(self.made):
            args = ("rm", "-f", "-v", name) if kind == "container" else ("volume", "rm", "-f", name)
            docker(*args, check=False)
        self.made.clear()


def run_check(image: str = "ingestd:check", say: Callable[[str], None] = print) -> None:
    """Build and run the image, check it; raises :class:`CheckError` on the first failure."""
    reason = engine_unavailable()
    if reason:
        raise CheckError(reason)
    check = Check(image, say)
    try:
        check.run()
    finally:
        check.cleanup()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.docker_check [--image TAG]``: 0 when every step passed, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="docker-check", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--image", default="ingestd:check", help="tag for the built image (default %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        run_check(args.image, lambda line: print(line, flush=True))
    except CheckError as exc:
        print(f"docker-check: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
