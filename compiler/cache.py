"""The on-disk compile cache: a second `tilecraft run` of a model loads its code instead of
compiling it.

Sits beside the driver, which looks a compile up here after the frontend and stores one
after the backend. Reads and writes `$TILECRAFT_CACHE_DIR`, else `$XDG_CACHE_HOME/tilecraft`,
else `~/.cache/tilecraft`.

The key is a sha256 over everything that decides the code: the module as imported and its
bound weights (lifted to arguments, so not in the IR text), the compile options as the
driver passes them (target, cost model and its file's content, pinned decisions, precision,
fusion, …), and the tools: Tilecraft's version and a digest of its sources and package data
(so an edited compiler or a retrained shipped cost model never hits an old entry), torch,
torch-mlir, xDSL, LightGBM and Python. An entry is a folder named by its key:

    forward.so   the compiled module as a shared library (`--emit so`)
    params.pt    the bound arguments after the compile (packed weights replace imported ones)
    entry.json   format, function name and signature, the report's lines, the key's parts,
                 and the sha256 of the two files above

It is written into a temporary folder and renamed into place, so a killed process leaves
no half entry; an entry that cannot be read or whose files do not match their digests is a
miss (and is replaced by the next store).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence

import torch

from tilecraft import __version__
from tilecraft.backends.cpu import runtime

FORMAT = 1  # bump when the entry layout changes
LIBRARY, PARAMS, META = "forward.so", "params.pt", "entry.json"
PACKAGES = (
    "tilecraft",
    "tilecraft.dialects",
    "tilecraft.passes",
    "tilecraft.backends",
    "tilecraft.corpus",
    "tilecraft.costmodel",
)
TOOLS = ("torch", "torch-mlir", "xdsl", "lightgbm")
_KEY = re.compile(r"[0-9a-f]{64}")
_TMP = ".tmp-"


def default_dir() -> str:
    explicit = os.environ.get("TILECRAFT_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tilecraft")


@dataclasses.dataclass
class Entry:
    fn: runtime.CompiledFunction  # the shared library, bound to the stored parameters
    meta: dict  # entry.json: "schedules", "compile_s", …


class CompileCache:
    def __init__(self, root: str | None = None):
        self.root = root or default_dir()

    # ---------------------------------------------------------------------- read, write
    def load(self, key: str) -> Entry | None:
        """The entry for `key`, or None when there is none or it cannot be used."""
        folder = os.path.join(self.root, key)
        try:
            with open(os.path.join(folder, META)) as f:
                meta = json.load(f)
            if meta["format"] != FORMAT or meta["key"] != key:
                return None
            for name in (LIBRARY, PARAMS):  # a truncated or damaged library would crash, not fail
                if file_digest(os.path.join(folder, name)) != meta["sha256"][name]:
                    return None
            params = torch.load(os.path.join(folder, PARAMS), weights_only=True)
            signature = runtime.Signature(_specs(meta["inputs"]), _specs(meta["outputs"]))
            fn = runtime.from_shared_library(os.path.join(folder, LIBRARY), meta["func_name"], signature, bound=params)
        except Exception:  # whatever is wrong with an entry, the answer is to compile afresh
            return None
        return Entry(fn, meta)

    def store(
        self,
        key: str,
        *,
        library: str,
        func_name: str,
        signature: runtime.Signature,
        params: Sequence[torch.Tensor],
        meta: Mapping,
    ) -> bool:
        """Write an entry (atomically: a temporary folder renamed into place). Returns
        whether it was written; an unwritable cache is no error, only a later miss."""
        tmp = None
        try:
            os.makedirs(self.root, exist_ok=True)
            tmp = tempfile.mkdtemp(dir=self.root, prefix=_TMP)
            shutil.copyfile(library, os.path.join(tmp, LIBRARY))
            torch.save(
                [p.detach().clone(memory_format=torch.contiguous_format) for p in params], os.path.join(tmp, PARAMS)
            )
            doc = {
                **meta,
                "format": FORMAT,
                "key": key,
                "func_name": func_name,
                "inputs": [[list(s.shape), s.dtype] for s in signature.inputs],
                "outputs": [[list(s.shape), s.dtype] for s in signature.outputs],
                "sha256": {name: file_digest(os.path.join(tmp, name)) for name in (LIBRARY, PARAMS)},
            }
            with open(os.path.join(tmp, META), "w") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
            folder = os.path.join(self.root, key)
            if os.path.exists(folder):  # an entry that failed to load: out of the way first
                _remove(folder)
            os.replace(tmp, folder)
            return True
        except OSError:  # unwritable, full, or another process stored the same key first
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
            return os.path.exists(os.path.join(self.root, key, META))

    # ----------------------------------------------------------------------- inspecting
    def entries(self) -> list[str]:
        """Paths of the complete entries."""
        return [p for p in self._folders() if _KEY.fullmatch(os.path.basename(p))]

    def size(self) -> int:
        """Bytes in entries and in temporary folders (a store under way, or a killed one's)."""
        return sum(folder_size(p) for p in self._folders())

    def clear(self) -> list[tuple[str, int]]:
        """Remove every entry and temporary folder (only what the cache writes: never the
        folder's other files). Returns each removed path with its size in bytes."""
        removed = []
        for path in self._folders():
            size = folder_size(path)
            with contextlib.suppress(FileNotFoundError):  # (another process removed it first)
                _remove(path)
                removed.append((path, size))
        return removed

    def _folders(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        return [os.path.join(self.root, n) for n in names if _KEY.fullmatch(n) or n.startswith(_TMP)]


def key(parts: Mapping) -> str:
    return _sha256(json.dumps(parts, sort_keys=True).encode())


def as_json(value):
    """An option's JSON form, for the key: records by their `to_json` (else their type and
    fields), mappings with string keys (pinned decisions are keyed by op id or kernel key),
    sequences as lists; anything else by its repr."""
    if isinstance(value, Mapping):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if hasattr(value, "to_json"):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a pass: which, and its options
        name = f"{type(value).__module__}.{type(value).__qualname__}"
        return {"dataclass": name, "fields": as_json(dataclasses.asdict(value))}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def key_parts(module_text: str, params: Sequence[torch.Tensor], options: Mapping) -> dict:
    """What a key hashes: the module as imported, its bound weights, the compile `options`
    and the tool versions (kept in the entry, to tell why two keys differ)."""
    return {
        "format": FORMAT,
        "module": _sha256(module_text.encode()),
        "params": params_digest(params),
        "options": as_json(options),
        "tools": tool_versions(),
    }


def params_digest(params: Sequence[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for p in params:
        p = p.detach().contiguous()
        h.update(f"{p.dtype}{tuple(p.shape)};".encode())
        h.update(p.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


@functools.cache
def tool_versions() -> dict:
    versions = {"tilecraft": __version__, "tilecraft-sources": sources_digest(), "python": sys.version}
    for name in TOOLS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["machine"] = platform.machine()
    return versions


def sources_digest() -> str:
    """sha256 over Tilecraft's files (sources and package data, such as the shipped cost
    models), each named relative to its package."""
    h = hashlib.sha256()
    seen = set()
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        for top in spec.submodule_search_locations or ():
            for folder, dirs, files in os.walk(top):
                dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
                for name in sorted(files):
                    path = os.path.join(folder, name)
                    real = os.path.realpath(path)
                    if real in seen or name.endswith((".pyc", ".so")):
                        continue
                    seen.add(real)
                    h.update(f"{package}/{os.path.relpath(path, top)}\0{file_digest(path)}\0".encode())
    return h.hexdigest()


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def folder_size(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # (a store or a removal under way)
                total += os.path.getsize(os.path.join(folder, name))
    return total


def _specs(rows) -> tuple[runtime.TensorSpec, ...]:
    return tuple(runtime.TensorSpec(tuple(shape), dtype) for shape, dtype in rows)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _remove(folder: str) -> None:
    """Rename away, then delete: a reader never sees a half-deleted entry."""
    parent = os.path.dirname(folder)
    doomed = tempfile.mkdtemp(dir=parent, prefix=_TMP)
    os.replace(folder, os.path.join(doomed, "old"))
    shutil.rmtree(doomed, ignore_errors=True)
