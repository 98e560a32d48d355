"""The layer order of DESIGN §5, kept by the code: no upward import, no import loop, internal
imports at the top of each module (so a file's first lines show what it depends on)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import importlinter  # noqa: F401  (the contract checker: a missing install fails here, not later)

import diffusion_hpc

ROOT = Path(diffusion_hpc.__file__).parent
PYPROJECT = ROOT.parents[1] / "pyproject.toml"
#: the CLI loads a command's implementation when the command runs, so `dhpc --help` and light
#: commands start without torch; that is the one place internal imports are deferred
DEFERRED_OK = {"diffusion_hpc.cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_layers_contract_is_kept():
    """import-linter's layers contract from pyproject.toml: a module imports only its own layer and
    the layers below (imports inside functions count too). Run in a child process: import-linter
    configures logging with disable_existing_loggers, which would silence this process's loggers."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(PYPROJECT)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_loops_between_modules():
    graph = grimp.build_graph("diffusion_hpc")
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _strongly_connected(edges) == []


def test_strongly_connected_finds_a_loop():
    """The loop check can fail: a three-module loop and a self-contained pair are reported."""
    loops = _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()})
    assert loops == [["a", "b", "c"]]


def test_internal_imports_sit_at_the_top_of_each_module():
    deferred = []
    for path in sorted(ROOT.rglob("*.py")):
        name = _module_name(path)
        if name in DEFERRED_OK:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                imports = [n for n in ast.walk(node) if isinstance(n, ast.ImportFrom)]
                for inner in imports:
                    if inner.level or (inner.module or "").startswith("diffusion_hpc"):
                        deferred.append(f"{name}:{inner.lineno} from {inner.module}")
    assert deferred == []


def test_cli_starts_without_the_model_libraries():
    """`dhpc --help` and the commands' --help load neither torch, Ray nor the model libraries (the
    CLI imports a command's implementation only when the command runs)."""
    code = ("import sys, contextlib, io\n"
            "from diffusion_hpc.cli import main\n"
            "for argv in ([], ['generate', '--help'], ['train', '--help'], ['evaluate', '--help'],\n"
            "             ['merge', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main(argv)\n"
            "heavy = ('torch', 'ray', 'diffusers', 'transformers', 'mediapipe', 'pytorch_lightning', 'anny')\n"
            "print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
