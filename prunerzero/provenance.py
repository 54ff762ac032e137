"""What produced a number: git commit (and whether the tree was dirty), library versions, device, command, time.

Every row the experiment runner writes, and every run record, carries ``provenance()``.
"""
from __future__ import annotations

import platform
import shlex
import subprocess
import sys
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = ("prunerzero", "torch", "transformers", "deap", "sympy", "safetensors")


@lru_cache(maxsize=1)
def git_state() -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout prunerzero runs from.

    Dirty means a tracked file that makes numbers (code, grids, spaces, tests) differs from the commit; ``results/``
    is left out, since it is what runs write: a second runner of one grid sees the first one's new rows there.
    """
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``, else ``platform``) and the vector ISA torch's kernels use.

    Recorded because float reductions differ between ISAs (AVX2 vs AVX512 kernels sum in different orders): the same
    cell is bit-identical when rerun on one machine but can differ in the last digits, and at high sparsity in more,
    on another.
    """
    import torch

    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown"
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        isa = None
    return f"{name} ({isa})" if isa else name


def device_name(device=None) -> str:
    """The accelerator's name, or the CPU (model, ISA) and its torch thread count."""
    import torch

    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_model()} CPU, {torch.get_num_threads()} threads"


def command_line(argv=None) -> str:
    """The command as it can be pasted back into a shell."""
    argv = sys.argv if argv is None else argv
    prog = Path(argv[0]).name if argv else "python"
    if prog in ("prunerzero", "__main__.py", "cli.py"):
        return "prunerzero " + shlex.join(argv[1:])
    return "python " + shlex.join(argv)


def provenance(device=None, command: str | None = None) -> dict:
    return {**git_state(), "versions": versions(), "device": device_name(device),
            "command": command or command_line(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
