"""One measurement in its own process: its memory never adds to the next one's, and a crash (also a kill for memory)
becomes its error row. The child runs ``python -m anomalib_simplenet.lab.isolated MODULE:FUNCTION ARGS.json
RESULT.json``: ``FUNCTION(**args)``, its dict written as JSON."""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # Linux prctl option: the signal a process gets when its parent dies


def _die_with_parent() -> None:
    """Run in the child before it starts: on Linux it gets SIGTERM when the process that started it dies, so a killed
    benchmark leaves no measurement running on unseen, holding a core (elsewhere: nothing)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_isolated(function: str, arguments: dict[str, Any], folder: Path, name: str) -> dict[str, Any]:
    """``function`` (``"module:function"``) called with ``arguments`` in a child process: its result dict with
    ``peak_rss_mb`` (``ru_maxrss`` of exactly that child) and ``wall_s``, or ``{"error": ...}`` when the child failed.
    Files go to ``folder/name.*``."""
    folder.mkdir(parents=True, exist_ok=True)
    args_file, result_file = folder / f"{name}.args.json", folder / f"{name}.result.json"
    args_file.write_text(json.dumps(arguments, default=str))
    result_file.unlink(missing_ok=True)
    start = time.perf_counter()
    command = [sys.executable, "-m", __name__, function, str(args_file), str(result_file)]
    # The hook only calls prctl between fork and exec: safe with threads.
    child = subprocess.Popen(command, preexec_fn=_die_with_parent)  # noqa: S603, PLW1509
    _, status, usage = os.wait4(child.pid, 0)
    code = child.returncode = os.waitstatus_to_exitcode(status)
    measured = {"peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": time.perf_counter() - start}  # Linux: kB
    if code == 0 and result_file.is_file():
        return {**json.loads(result_file.read_text()), **measured}
    why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    return {"error": f"child process {why}" + (" (memory?)" if code == -signal.SIGKILL else ""), **measured}


if __name__ == "__main__":
    module, _, function = sys.argv[1].partition(":")
    result = getattr(importlib.import_module(module), function)(**json.loads(Path(sys.argv[2]).read_text()))
    Path(sys.argv[3]).write_text(json.dumps(result, default=str))
