"""Optional parts stay optional: the memory manager imports no heavy dependency."""

import subprocess
import sys

HEAVY = ("torch", "triton", "simpy", "plotly", "typer", "rich")


def test_core_modules_import_nothing_heavy():
    code = (
        "import sys\n"
        "import kvpager, kvpager.manager, kvpager.scheduler, kvpager.blocks, kvpager.prefix\n"
        "import kvpager.backends, kvpager.sim, kvpager.sim.traces, kvpager.sim.cost_model\n"
        "import kvpager.sparse, kvpager.protocol, kvpager.usage\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_backend_registry_reports_without_importing_backends():
    code = ("import sys, kvpager.backends as b\n"
            "names = b.names()\n"
            "print(names, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "['cuda', 'triton', 'reference'] False"
