"""A plain ``pip install .`` (no extras) must run every subcommand but ``report``: building the
parser and importing what ``run``, ``sim``, ``status``, ``collect`` and ``tail`` import must work
without any optional dependency. Checked in a fresh interpreter in which importing an optional
package fails as it does on a plain install (pyarrow, a base dependency, uses numpy only when it
is there). ``.ci/run`` also runs the offline demo in a real plain venv."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

OPTIONAL = ("numpy", "matplotlib", "nats", "duckdb", "websockets", "pandas", "polars")
"""Packages only an extra (``report``, ``nats``) or the test extra brings."""

BLOCKER = """
import json, sys

for blocked in sys.argv[1].split(","):
    sys.modules[blocked] = None  # `import x` now fails and find_spec("x") is None, as when absent
"""
"""Run first in the probe interpreter: the packages named in argv[1] look not installed."""

PROBE = (
    BLOCKER
    + """
from ingestd.cli import build_parser
build_parser()
for name in sys.argv[2:]:
    __import__(name)
print(json.dumps(sorted({m.partition(".")[0] for m, mod in sys.modules.items() if mod is not None})))
"""
)

COMMAND_MODULES = {
    "parser only": [],
    "run": ["ingestd.app", "ingestd.config", "ingestd.loop", "ingestd.observe.logging"],
    "sim": ["ingestd.sim.cli", "ingestd.sim.venue"],
    "status": ["ingestd.observe.status"],
    "collect": ["ingestd.collect.cli", "ingestd.collect.runner"],
    "tail": ["ingestd.tail"],
    "report (until its matplotlib check)": ["ingestd.report.cli"],
}
"""What each subcommand imports before it does any work (the modules its ``_cmd_*`` imports)."""


@pytest.mark.parametrize("command", list(COMMAND_MODULES))
def test_no_optional_dependency_is_imported(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(OPTIONAL), *COMMAND_MODULES[command]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout))
    assert "ingestd" in loaded
    assert not loaded & set(OPTIONAL), f"{command} imports {sorted(loaded & set(OPTIONAL))}"


MAIN = (
    BLOCKER
    + """
from ingestd.cli import main
sys.exit(main(sys.argv[2:]))
"""
)


def test_report_without_its_extra_names_the_extra(tmp_path: Path) -> None:
    """``ingestd report`` on a plain install: one line naming ``ingestd[report]``, exit code 2."""
    (tmp_path / "data").mkdir()
    args = ["report", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    proc = subprocess.run(
        [sys.executable, "-c", MAIN, "matplotlib,numpy", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "ingestd report: needs matplotlib: pip install 'ingestd[report]'\n"
    assert not (tmp_path / "out").exists()


def test_tail_without_its_extra_names_the_extra() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", MAIN, "nats", "tail", "ingestd.>"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "ingestd tail: needs nats-py: pip install 'ingestd[nats]'\n"
