"""Build and load the small C++ extension that lets a CPU-only torch trace on fake CUDA.

The extension (``fakecuda.cpp``) registers c10's ``FakeGuardImpl<CUDA>`` as the CUDA
device-guard and a ``CUDAHooksInterface`` whose ``hasCUDA()`` is true and ``init()`` does
nothing. It must be loaded (``load()``) *before* ``import torch``. It is compiled with g++
against the headers bundled with the installed torch, into ``validation/_build/`` (gitignored),
one file per torch version; ``ExtensionUnavailable`` says why when it cannot be built.
Nothing here imports torch.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["BUILD_DIR", "ExtensionUnavailable", "build", "load"]

SOURCE = Path(__file__).with_name("fakecuda.cpp")
BUILD_DIR = Path(__file__).resolve().parents[1] / "_build"


class ExtensionUnavailable(RuntimeError):
    """The fake-CUDA extension cannot be built or loaded here (the message says why)."""


def _torch_dir() -> Path:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise ExtensionUnavailable("torch is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _target() -> Path:
    version = importlib.metadata.version("torch").replace("+", "_")
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return BUILD_DIR / f"fakecuda-torch{version}-{tag}.so"


def build(force: bool = False) -> Path:
    """Compile the extension for the installed torch (cached by torch version)."""
    target = _target()
    if target.exists() and not force:
        return target
    torch_dir = _torch_dir()
    include, lib = torch_dir / "include", torch_dir / "lib"
    if not (include / "ATen" / "detail" / "CUDAHooksInterface.h").exists():
        raise ExtensionUnavailable(f"torch headers not found under {include}")
    if not (lib / "libtorch_cpu.so").exists():
        raise ExtensionUnavailable(f"libtorch_cpu.so not found under {lib} (not Linux?)")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise ExtensionUnavailable("no C++ compiler (g++) on PATH")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    cmd = [
        cxx, "-O1", "-std=c++20", "-shared", "-fPIC", "-w",
        f"-I{include}", str(SOURCE),
        f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}", "-o", str(tmp),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ExtensionUnavailable(
            f"C++ build failed ({cxx}, exit {proc.returncode}): {proc.stderr[-2000:]}"
        )
    tmp.replace(target)
    return target


def load() -> Path:
    """Build if needed and load the extension; must run before ``import torch``."""
    if "torch" in sys.modules:
        raise ExtensionUnavailable("torch is already imported; load the extension first")
    path = build()
    try:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise ExtensionUnavailable(f"cannot load {path}: {exc}") from exc
    return path
