"""The reliability scripts (issue 21) run end to end in a short form, so they do not rot: the fault drill
(SIGKILL rounds and database cuts, on the four-node tree), the soak and the stateful fuzzer. Each is the
real script in a subprocess; the long runs are the operator's (docs/operator-guide.md, "Reliability drills").

Each drill must end "nothing acknowledged was lost" (exit 0): the loss the first long runs found (a message
claimed at its destination or relay before its effect was stored, then the node killed or its database cut in
between) is fixed, and the 100-round and 20-cut runs after the fix lost nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(*argv: str, timeout: float = 600) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def test_fault_drill_kills_a_node_and_finds_everything_acknowledged():
    rc, out = run_script("scripts/drill_faults.py", "--small", "--rounds", "1", "--between", "0.3", "--down", "0.3")
    assert rc == 0 and "verdict: nothing acknowledged was lost" in out, out
    assert "audit chains: all 4 intact" in out and "without their audit record: 0" in out, out
    assert "entries missing: none; records missing: none" in out and "replica: caught up" in out, out
    assert "time to converge after a restart" in out, out


def test_database_drill_cuts_the_provinces_postgresql_and_loses_nothing():
    rc, out = run_script("scripts/drill_faults.py", "--small", "--db-cuts", "--rounds", "1", "--cut-seconds", "1.5",
                         "--between", "0.3")
    assert rc == 0 and "verdict: nothing acknowledged was lost" in out, out
    assert "503 UNAVAILABLE" in out.split("during the cuts:")[1].splitlines()[0], out  # a cut is answered 503
    assert "entries missing: none; records missing: none" in out and "without their audit record: 0" in out, out
    assert "audit chains: all 4 intact" in out, out


def test_soak_reports_windows_memory_and_descriptors():
    rc, out = run_script("scripts/soak.py", "--minutes", "0.15", "--window", "0.05", "--settle", "0.05",
                         "--capacity-seconds", "2", "--records", "50")
    assert rc == 0, out
    assert "-- soak:" in out and out.count("RSS MiB") == 3, out
    # growth is judged from the first window after the settling time (here the second) to the last
    assert out.count("after minute 0.05, RSS") == 3 and "target < 5 %" in out, out


def test_stateful_fuzzer_runs_and_finds_nothing():
    rc, out = run_script("scripts/fuzz_api.py", "--minutes", "0.2", "--roles", "dept,operator", "--batch", "3")
    assert "calls (examples)" in out, out
    assert rc == 0 and "failures: none" in out, out
