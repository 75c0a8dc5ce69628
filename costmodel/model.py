"""The `CostModel` interface, and the one place a model is created from a name or a file.

A cost model predicts, for one kernel and many candidate decisions, the latency (seconds),
the utilization (the roofline bound over the latency, as the harness records it) and a
ranking score (higher = better candidate). `update(records)` folds new measurements in;
`save`/`load` write and read a model file that carries the feature-schema version it was
trained with. On the costmodel floor: passes never call a model, the driver and
`costmodel/search.py` do; `create(kind)` reads a model file when given a path.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from tilecraft.backends.cpu.schedule import TileDecision
from tilecraft.corpus.kernels import Kernel

MODEL_FORMAT = "tilecraft-costmodel"
SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "data")
SHIPPED_MODEL = os.path.join(SHIPPED_DIR, "cpu-avx512.json.gz")


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
    """`analytical`, `lightgbm` (the shipped pretrained model) or a model file path."""
    from tilecraft.costmodel.analytical import AnalyticalCostModel

    if spec == "analytical":
        return AnalyticalCostModel(target)
    if spec == "lightgbm":
        if not os.path.exists(SHIPPED_MODEL):
            raise CostModelError(f"no shipped model at {SHIPPED_MODEL}: train one with `tilecraft costmodel train`")
        return load(SHIPPED_MODEL, target)
    if os.path.exists(spec):
        return load(spec, target)
    raise CostModelError(f"unknown cost model {spec!r} (analytical, lightgbm, or a model file)")


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


def load(path: str, target) -> CostModel:
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
    with opener(tmp, "wt") as f:
        json.dump(doc, f)
    os.replace(tmp, path)
