"""Nothing in ``src/`` unpickles: a static scan of every module with ``ast``.

Flagged: ``pickle.load(s)`` / ``cPickle`` / ``dill`` / ``cloudpickle`` loads, ``pickle.Unpickler``,
``torch.load(...)`` without ``weights_only=True``, ``np.load(..., allow_pickle=<not False>)``,
``joblib.load``, ``pd.read_pickle``, Lightning's ``load_from_checkpoint``, and any call given a
``ckpt_path=`` (``Trainer.fit``) without ``weights_only=True``.

Writing a pickle is allowed (``pickle.dumps``, a ``pickle.Pickler``): the 4D-Humans export writes the
``data.pyd`` member its reader unpickles; what we write holds only containers and arrays, and we
never read it back except in tests, through an unpickler that allows ``numpy.ndarray`` alone.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unpickling_calls(source: str, filename: str = "<src>") -> list[str]:
    """``file:line: call`` for every call of ``source`` that may unpickle."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ImportFrom) and node.module in PICKLE_MODULES:
            names = [a.name for a in node.names if a.name in {"load", "loads", "Unpickler"}]
            if names:
                found.append(f"{filename}:{node.lineno}: from {node.module} import {', '.join(names)}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, last = name.rpartition(".")
        bad = None
        if head.split(".")[-1:] and head.split(".")[-1] in PICKLE_MODULES and last in {"load", "loads", "Unpickler"}:
            bad = name
        elif name in {"torch.load"} and not _is_const(_keyword(node, "weights_only"), True):
            bad = f"{name} without weights_only=True"
        elif last == "load" and head in {"np", "numpy"}:
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not _is_const(allow, False):
                bad = f"{name}(allow_pickle=...)"
        elif name in {"joblib.load", "pd.read_pickle", "pandas.read_pickle"} or last in {"read_pickle", "load_from_checkpoint"}:
            bad = name
        elif _keyword(node, "ckpt_path") is not None and not _is_const(_keyword(node, "weights_only"), True):
            bad = f"{name}(ckpt_path=...) without weights_only=True"
        if bad:
            found.append(f"{filename}:{node.lineno}: {bad}")
    return found


def test_src_never_unpickles():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    found = [hit for f in files for hit in unpickling_calls(f.read_text(encoding="utf-8"), str(f.relative_to(SRC)))]
    assert not found, "calls that may unpickle:\n" + "\n".join(found)


@pytest.mark.parametrize("snippet", [
    "import torch\nstate = torch.load(f)",
    "import torch\nstate = torch.load(f, weights_only=False)",
    "import pickle\nobj = pickle.load(fh)",
    "import pickle\nobj = pickle.loads(data)",
    "from pickle import loads",
    "import numpy as np\na = np.load(p, allow_pickle=True)",
    "import joblib\nm = joblib.load(p)",
    "import pandas as pd\ndf = pd.read_pickle(p)",
    "model = Module.load_from_checkpoint(p)",
    "trainer.fit(module, ckpt_path=p)",
])
def test_scan_flags_unpickling(snippet):
    assert unpickling_calls(textwrap.dedent(snippet)), snippet


@pytest.mark.parametrize("snippet", [
    "import torch\nstate = torch.load(f, map_location='cpu', weights_only=True)",
    "import numpy as np\na = np.load(p)\nb = np.load(p, allow_pickle=False)",
    "trainer.fit(module, ckpt_path=p, weights_only=True)",
    "import json\nobj = json.loads(s)",
    "import pickle\ndata = pickle.dumps(obj)\npickle.Pickler(fh, protocol=5).dump(obj)",
])
def test_scan_passes_safe_loads(snippet):
    assert unpickling_calls(snippet) == []
