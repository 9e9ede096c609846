"""Run code against the Python sources of modules that ``make native`` compiled.

Python imports a compiled module (``candles.cpython-311-....so``) in place of its source. A
subprocess started by :func:`run_pure` imports this checkout's modules from their ``.py``
files only (third-party extension modules load as usual), which is how the project runs where
nothing compiles - so tests can run the sources' doctests and check that what one build
pickles the other loads.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_HOOK = f"""
import sys
from importlib.machinery import BYTECODE_SUFFIXES, SOURCE_SUFFIXES, FileFinder, SourceFileLoader, SourcelessFileLoader

ROOT = {str(ROOT)!r}

def _sources_only(path):
    inside = path == ROOT or path.startswith(ROOT + "/")
    if inside and "site-packages" not in path and "/.venv" not in path:
        return FileFinder(path, (SourceFileLoader, SOURCE_SUFFIXES), (SourcelessFileLoader, BYTECODE_SUFFIXES))
    raise ImportError(path)

sys.path_hooks.insert(0, _sources_only)
sys.path_importer_cache.clear()
sys.path.insert(0, ROOT)
"""


def run_pure(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter that imports this checkout from its sources; raises
    with the child's output if it fails."""
    proc = subprocess.run(
        [sys.executable, "-c", _HOOK + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    if proc.returncode:
        msg = f"pure-Python child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        raise AssertionError(msg)
    return proc


def compiled(module: object) -> bool:
    """True if ``module`` was imported from a C extension (``make native``)."""
    return str(getattr(module, "__file__", "")).endswith(".so")
