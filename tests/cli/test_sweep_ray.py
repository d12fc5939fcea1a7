"""`kvpager sweep --ray ADDRESS` on a real Ray cluster: a head started on this machine
(127.0.0.1 only, a free port, bounded time), the CLI connecting to it by address, and the
same results as the in-process sweep.

The head and its clients share an authentication token generated here. The head runs as
`ray start --head --block` in a session of its own, and teardown ends that session's process
group: it stops exactly the Ray processes this test started, where
`ray stop` would stop every Ray instance of the user on the machine (other test runs
included).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed (the optional 'ray' extra)")

REPO = Path(__file__).resolve().parents[2]
AZURE = REPO / "examples" / "azure_conv_sample.csv"
START_TIMEOUT_S = 120
ARGS = ["--rates", "2,6", "--cache", "paged", "--cache", "orca-max", "--limit", "30"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    found = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    if not Path(found).exists():
        pytest.skip("the ray command is not installed next to this Python")
    return found


@pytest.fixture(scope="module")
def ray_head():
    """(address, env) of a Ray head on 127.0.0.1; stopped (its process group) afterwards."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="kvp-ray-", dir="/tmp")  # short: Ray's socket paths
    # a token of this test's own for the head and its clients: Ray may enable token
    # authentication by itself when it finds one in the user's home; this keeps the test
    # independent of whatever is there
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    head = subprocess.Popen(
        [ray_cli(), "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if head.poll() is not None:
                pytest.fail(f"ray start exited {head.returncode}: "
                            f"{head.stderr.read().decode()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not listen on {address} in {START_TIMEOUT_S} s")
            time.sleep(0.5)
        yield address, env
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def strip(doc: dict) -> list:
    """The points' metrics without wall-clock times (which differ run to run)."""
    points = []
    for p in doc["points"]:
        m = json.loads(json.dumps(p["metrics"]))
        m.pop("wall_s", None)
        m.get("time", {}).pop("wall_s", None)
        points.append((p["value"], p["strategy"], m))
    return points


def test_sweep_on_a_ray_cluster_by_address_matches_in_process(ray_head, tmp_path):
    address, env = ray_head
    done = subprocess.run(
        [sys.executable, "-m", "kvpager.cli", "sweep", str(AZURE), *ARGS, "--ray", address,
         "--json", "--out", str(tmp_path / "ray")],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    on_ray = json.loads(done.stdout)
    assert on_ray["executor"] == {"kind": "ray", "address": address, "workers": None}

    inline = subprocess.run(
        [sys.executable, "-m", "kvpager.cli", "sweep", str(AZURE), *ARGS, "--workers", "1",
         "--json", "--out", str(tmp_path / "inline")],
        env=env, capture_output=True, text=True, timeout=300)
    assert inline.returncode == 0, inline.stderr[-3000:]
    in_process = json.loads(inline.stdout)
    assert in_process["executor"]["kind"] == "inline"
    assert strip(on_ray) == strip(in_process)
    assert on_ray["sustained"] == in_process["sustained"]
