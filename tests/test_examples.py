"""The example scripts run and say what they claim."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_manager_demo_runs_and_shows_sharing():
    out = subprocess.run([sys.executable, str(EXAMPLES / "manager_demo.py")],
                         capture_output=True, text=True, check=True).stdout
    assert "bob reuses 12 cached tokens" in out
    assert "copy blocks [[3, 5]] first" in out
    assert "copy-on-write copies so far: 1" in out
