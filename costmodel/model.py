"""The `CostModel` interface, and the one place a model is created from a name or a file.

A cost model predicts, for one kernel and many candidate decisions, the latency (seconds),
the utilization (the roofline bound over the latency, as the harness records it) and a
ranking score (higher = better candidate). `update(records)` folds new measurements in;
`save`/`load` write and read a model file that carries the feature-schema version it was
trained with. On the costmodel floor: passes never call a model, the driver and
`costmodel/search.py` do; `create(kind)` reads a model file when given a path.

A model per machine: `create("lightgbm", target)` takes the model `tilecraft costmodel
adapt` installed for this target (`installed_path`: the per-user model directory, keyed by
`Target.hash()`), else the shipped model of this machine's class (`SHIPPED_MODELS`: same CPU
name and ISA features), else the nearest shipped one, saying so once on stderr with how to
adapt it (`choose` tells which and why).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from tilecraft.backends.cpu.schedule import TileDecision
from tilecraft.corpus.kernels import Kernel
from tilecraft.dialects.irutil import replace_file

MODEL_FORMAT = "tilecraft-costmodel"
SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "data")
MODEL_DIR_ENV = "TILECRAFT_MODEL_DIR"  # where adapted models are installed (tests point it elsewhere)


@dataclasses.dataclass(frozen=True)
class ShippedModel:
    """A pretrained model in costmodel/data and the machine class it was trained for: the
    CPU name and ISA features of `Target` (a test checks them against the file's target)."""

    file: str
    cpu_name: str
    features: tuple[str, ...]

    @property
    def path(self) -> str:
        return os.path.join(SHIPPED_DIR, self.file)


SHIPPED_MODELS = (
    ShippedModel(
        "cpu-avx512.json.gz",
        "Intel(R) Xeon(R) Processor",
        ("amx", "amx_bf16", "amx_int8", "avx2", "avx512", "avx512bf16", "avx512fp16", "avx512vnni", "fma"),
    ),
    ShippedModel("cpu-amd-epyc.json.gz", "AMD EPYC", ("avx2", "avx512", "avx512bf16", "avx512vnni", "fma")),
)
SHIPPED_MODEL = SHIPPED_MODELS[0].path  # the seed machine's (the Intel Xeon with AMX)


class CostModelError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Predictions:
    latency_s: np.ndarray
    utilization: np.ndarray
    score: np.ndarray  # higher = better; what search and the compiler rank by


@dataclasses.dataclass(frozen=True)
class Record:
    """One measured (kernel, decision) pair: what models train on."""

    kernel: Kernel
    decision: TileDecision
    latency_s: float
    utilization: float
    source: str = ""
    target: object = None  # the machine it was measured on (None: the model's own target)


class CostModel(Protocol):
    kind: str

    def predict(self, kernel: Kernel, decisions: Sequence[TileDecision]) -> Predictions: ...

    def update(self, records: Sequence[Record]) -> None: ...

    def save(self, path: str) -> None: ...


def best_decision(model: CostModel, kernel: Kernel, space: Sequence[TileDecision]) -> tuple[TileDecision, float]:
    """The candidate the model ranks first, with its predicted latency."""
    p = model.predict(kernel, space)
    i = int(np.argmax(p.score))
    return space[i], float(p.latency_s[i])


def create(spec: str, target) -> CostModel:
    """`analytical`, `lightgbm` (the model for this machine: `choose`) or a model file path."""
    from tilecraft.costmodel.analytical import AnalyticalCostModel

    if spec == "analytical":
        return AnalyticalCostModel(target)
    if spec == "lightgbm":
        choice = choose(target)
        if choice.how == "installed":
            try:
                return load(choice.path, target)
            except CostModelError as exc:  # say why, then fall back to the shipped models
                _note_once(choice.path, f"{exc}; using a shipped model (rerun 'tilecraft costmodel adapt')")
                choice = choose(target, installed=False)
        if choice.how == "foreign":
            _note_once(choice.path + target_hash(target), choice.note(target))
        model = load(choice.path, target)
        if choice.how == "foreign" and choice.other_registers(target):
            model.foreign_registers = True  # (`search.pick`: its contraction schedules are the defaults)
        return model
    if os.path.exists(spec):
        return load(spec, target)
    raise CostModelError(f"unknown cost model {spec!r} (analytical, lightgbm, or a model file)")


# ------------------------------------------------------------------- a model per machine
def models_dir() -> str:
    """Where `tilecraft costmodel adapt` installs models: $TILECRAFT_MODEL_DIR, else
    $XDG_DATA_HOME/tilecraft/models, else ~/.local/share/tilecraft/models."""
    if os.environ.get(MODEL_DIR_ENV):
        return os.environ[MODEL_DIR_ENV]
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "tilecraft", "models")


def target_hash(target) -> str:
    return target.hash() if hasattr(target, "hash") else ""


def installed_path(target) -> str:
    """The adapted model of exactly this target (it need not exist)."""
    return os.path.join(models_dir(), f"{target_hash(target)}.json.gz")


def machine_class(target) -> tuple[str, tuple[str, ...]]:
    """What a shipped model must share with a machine to be its own: CPU name, ISA features."""
    return getattr(target, "cpu_name", ""), tuple(sorted(getattr(target, "features", ())))


def describe_machine(cpu_name: str, features: Sequence[str]) -> str:
    """`Intel(R) Xeon(R) Processor, AVX-512 + AMX`: the name and the widest vector ISA."""
    isa = "AVX-512" if "avx512" in features else "AVX2" if "avx2" in features else "SSE"
    return f"{cpu_name}, {isa}{' + AMX' if 'amx' in features else ''}"


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    path: str
    how: str  # "installed" (adapted to this target), "class" (shipped, same class), "foreign"
    trained_on: str  # the machine it was trained for, in words

    def other_registers(self, target) -> bool:
        """The model was trained on another register file than the target's (AVX-512's 32
        zmm against AVX2's 16 ymm): its register and cache tiles' ranking does not carry over
        (`search.FOREIGN_REGISTERS_DEFAULT`)."""
        theirs = next((s.features for s in SHIPPED_MODELS if s.path == self.path), None)
        return theirs is not None and ("avx512" in theirs) != ("avx512" in machine_class(target)[1])

    def note(self, target) -> str:
        from tilecraft.backends.cpu.target import host

        here = describe_machine(*machine_class(target))
        where = "" if target_hash(target) == host().hash() else " on that machine"
        text = (
            f"no cost model for this machine ({here}; target {target_hash(target)}): using the one "
            f"trained on {self.trained_on}; run 'tilecraft costmodel adapt'{where} to adapt it"
        )
        from tilecraft.costmodel import search  # (it imports this module)

        if search.FOREIGN_REGISTERS_DEFAULT and self.other_registers(target):
            text += " (until then its contractions take the hand-written schedules: it knows other registers)"
        return text


def choose(target, *, installed: bool = True) -> ModelChoice:
    """The LightGBM model `create("lightgbm", target)` loads, and why."""
    path = installed_path(target)
    if installed and target_hash(target) and os.path.exists(path):
        return ModelChoice(path, "installed", f"this machine (target {target_hash(target)})")
    shipped = [s for s in SHIPPED_MODELS if os.path.exists(s.path)]
    if not shipped:
        raise CostModelError(f"no shipped model in {SHIPPED_DIR}: train one with `tilecraft costmodel train`")
    cpu_name, features = machine_class(target)
    for s in shipped:
        if (s.cpu_name, tuple(sorted(s.features))) == (cpu_name, features):
            return ModelChoice(s.path, "class", describe_machine(s.cpu_name, s.features))

    def likeness(s: ShippedModel) -> tuple:  # same vendor first, then the most ISA features in common
        ours, theirs = set(features), set(s.features)
        vendor = cpu_name.split(" ", 1)[0] == s.cpu_name.split(" ", 1)[0]
        return vendor, len(ours & theirs) / max(len(ours | theirs), 1)

    best = max(shipped, key=likeness)  # ties: the first listed (the seed machine's)
    return ModelChoice(best.path, "foreign", describe_machine(best.cpu_name, best.features))


_NOTED: set[str] = set()
_DEFERRED: list[tuple[str, str]] | None = None  # (key, note) held until a command succeeds (`deferred_notes`)


def _note_once(key: str, message: str) -> None:
    if key not in _NOTED:
        _NOTED.add(key)
        _emit(key, message)


def _emit(key: str, message: str) -> None:
    if _DEFERRED is not None:
        _DEFERRED.append((key, message))
    else:
        print(f"tilecraft: {message}", file=sys.stderr)


@contextlib.contextmanager
def deferred_notes():
    """Notes about the model in use (a foreign one, say) printed once the body has run:
    after a command's own output, and not at all when it fails, whose error is then the
    one line it prints (the next command in the process says them again)."""
    global _DEFERRED
    held: list[tuple[str, str]] = []
    outer, _DEFERRED = _DEFERRED, held
    try:
        yield
    except BaseException:
        _NOTED.difference_update(key for key, _ in held)
        raise
    finally:
        _DEFERRED = outer
    for key, message in held:
        _emit(key, message)


def read_model_file(path: str) -> dict:
    import gzip
    import zlib

    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise CostModelError(f"model file not found: {path}") from None
    except (OSError, EOFError, zlib.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CostModelError(f"{path} is not a Tilecraft cost model ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise CostModelError(f"{path} is not a Tilecraft cost model (no '{MODEL_FORMAT}' header)")
    return doc


# Models loaded in this process, by file (path, size, modification time) and target: a
# compile loads its model (0.07-0.12 s: gunzip, JSON, the boosters' trees), and a process
# that compiles many models (a benchmark, `torch.compile` graphs) reads the file once.
_LOADED: dict[tuple, CostModel] = {}
LOADED_MAX = 4


def load(path: str, target) -> CostModel:
    """The model in `path`, for `target`. Each call returns its own object: a caller may set
    its attributes or `update` it (its containers are its own copies); the boosters
    themselves are shared and never changed in place (an update trains new ones)."""
    try:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, target_hash(target), repr(target))
    except OSError:
        key = None  # (read_model_file says why)
    model = _LOADED.get(key) if key is not None else None
    if model is None:
        model = _load(path, target)
        if key is None:
            return model
        while len(_LOADED) >= LOADED_MAX:  # (the oldest out)
            _LOADED.pop(next(iter(_LOADED)), None)
        _LOADED[key] = model
    return _own_copy(model)


def _own_copy(model: CostModel) -> CostModel:
    """A shallow copy whose dicts and lists (boosters by name, offsets, meta, params) are
    its own: what one caller changes, no other sees."""
    out = copy.copy(model)
    for name, value in vars(model).items():
        if isinstance(value, (dict, list)):
            setattr(out, name, copy.deepcopy(value) if name == "meta" else copy.copy(value))
    return out


def _load(path: str, target) -> CostModel:
    from tilecraft.costmodel.features import SCHEMA_VERSION
    from tilecraft.costmodel.lightgbm_model import LightGBMCostModel

    doc = read_model_file(path)
    if doc.get("schema") != SCHEMA_VERSION:
        raise CostModelError(
            f"{path} was trained with feature schema v{doc.get('schema')}, this Tilecraft computes "
            f"v{SCHEMA_VERSION}: retrain it with `tilecraft costmodel train`"
        )
    if doc.get("kind") != "lightgbm":
        raise CostModelError(f"{path}: unknown model kind {doc.get('kind')!r}")
    return LightGBMCostModel.from_doc(doc, target)


def write_model_file(path: str, doc: dict) -> None:
    """Atomically: a reader never sees half a model."""
    import gzip

    tmp = f"{path}.tmp{os.getpid()}"
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(tmp, "wt") as f:
            json.dump(doc, f)
        replace_file(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
