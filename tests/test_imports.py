"""Optional parts stay optional, and the layers import what the layout says they may."""

import ast
import pathlib
import subprocess
import sys

import kvpager

HEAVY = ("torch", "triton", "simpy", "plotly", "typer", "rich", "zmq")
PACKAGE = pathlib.Path(kvpager.__file__).parent


def _kvpager_imports(path: pathlib.Path) -> set[str]:
    """Every `kvpager...` module a source file imports, at any depth (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("kvpager"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
                node.module.startswith("kvpager")):
            names.add(node.module)
    return names


def test_core_modules_import_nothing_heavy():
    code = (
        "import sys, pkgutil, importlib\n"
        "import kvpager, kvpager.core\n"
        "for m in pkgutil.walk_packages(kvpager.core.__path__, 'kvpager.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "import kvpager.backends, kvpager.sim, kvpager.sim.traces, kvpager.sim.cost_model\n"
        "import kvpager.sparse\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_core_imports_only_core():
    """Nothing under kvpager/core reaches outside it (the kernels, the simulator, the CLI)."""
    for path in (PACKAGE / "core").rglob("*.py"):
        outside = {n for n in _kvpager_imports(path)
                   if n != "kvpager" and not n.startswith("kvpager.core")}
        assert not outside, f"{path.relative_to(PACKAGE)} imports {sorted(outside)}"


def test_scheduling_layer_imports_nothing_of_the_memory_layer():
    """The scheduler drives any manager through the shared protocol and plans."""
    files = list((PACKAGE / "core" / "sched").rglob("*.py"))
    assert files
    for path in files:
        memory = {n for n in _kvpager_imports(path) if n.startswith("kvpager.core.memory")}
        assert not memory, f"{path.relative_to(PACKAGE)} imports {sorted(memory)}"


def test_the_layer_check_sees_imports(tmp_path):
    """The checker above finds module-level and lazy imports (so the tests can fail)."""
    src = tmp_path / "m.py"
    src.write_text("import kvpager.core.memory.manager\n"
                   "def f():\n    from kvpager.core.memory.block_pool import BlockPool\n")
    assert _kvpager_imports(src) == {"kvpager.core.memory.manager",
                                     "kvpager.core.memory.block_pool"}
def test_backend_registry_reports_without_importing_backends():
    code = ("import sys, kvpager.backends as b\n"
            "names = b.names()\n"
            "print(names, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "['cuda', 'triton', 'reference'] False"


def test_tensor_conveniences_without_torch_say_how_to_install_it():
    """Issue 23: a bare ModuleNotFoundError gave no hint; the error names the call and the
    CPU build's install command."""
    code = ("import sys\n"
            "sys.modules['torch'] = None  # as if not installed\n"
            "import numpy as np\n"
            "from kvpager.core.errors import MissingDependencyError\n"
            "from kvpager.core.memory.manager import KVCacheManager\n"
            "m = KVCacheManager(num_gpu_blocks=4, block_size=4)\n"
            "m.allocate('a', 5)\n"
            "print(m.block_tables_array(m.rows_of(['a'])).tolist())\n"
            "try:\n"
            "    m.block_tables_tensor(m.rows_of(['a']))\n"
            "except MissingDependencyError as exc:\n"
            "    print(isinstance(exc, ModuleNotFoundError), exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[[0, 1]]"
    assert lines[1].startswith("True KVCacheManager.block_tables_tensor needs torch")
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in \
        lines[1]
