"""Reports, sweeps and benchmarks import their heavy dependencies only when they draw or run."""

import subprocess
import sys

HEAVY = ("torch", "triton", "simpy", "plotly", "ray", "typer", "rich")


def test_report_sweep_and_bench_packages_import_nothing_heavy():
    code = (
        "import sys\n"
        "import kvpager.report, kvpager.report.rundata, kvpager.report.downsample\n"
        "import kvpager.report.run_report, kvpager.report.sweep_report, kvpager.report.page\n"
        "import kvpager.sweep, kvpager.bench.manager, kvpager.bench.record\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout
