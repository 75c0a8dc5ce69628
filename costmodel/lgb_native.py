"""Prediction with a LightGBM model through LightGBM's own C library, without `import lightgbm`.

On the costmodel floor, under the models that predict with LightGBM boosters
(`lightgbm_model.py`, `amx.py`). Reads a booster's model text; writes nothing.

Why: `import lightgbm` imports scikit-learn (and with it scipy.stats and pandas) where they
are installed, about 1.1-1.7 s, the largest single cost of a process's first compile
(docs/measurements.md, compile time). The compiler only predicts, so it loads the model
text into `lib_lightgbm` (the library the `lightgbm` package ships and itself calls through
ctypes) and calls `LGBM_BoosterPredictForMat`: the same trees, the same code, the same
numbers as `lightgbm.Booster.predict`. Training, and continued boosting from a loaded
model, still go through the `lightgbm` package (`to_lightgbm`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
import weakref

import numpy as np

_C_API_DTYPE_FLOAT64 = 1  # LightGBM's c_api.h
_C_API_PREDICT_NORMAL = 0
_LIB: ctypes.CDLL | None = None
_LIB_LOCK = threading.Lock()


class NativeError(RuntimeError):
    """lib_lightgbm is missing or refused a model (the message says which)."""


def _lib() -> ctypes.CDLL:
    global _LIB
    with _LIB_LOCK:
        if _LIB is None:
            spec = importlib.util.find_spec("lightgbm")  # finds the package without running it
            if spec is None or not spec.submodule_search_locations:
                raise NativeError("the lightgbm package is not installed")
            pkg = spec.submodule_search_locations[0]
            # the places lightgbm/libpath.py looks in, in its order
            for d in (os.path.dirname(pkg), os.path.join(pkg, "bin"), os.path.join(pkg, "lib")):
                path = os.path.join(d, "lib_lightgbm.so")
                if os.path.isfile(path):
                    break
            else:
                raise NativeError(f"no lib_lightgbm.so in the lightgbm package at {pkg}")
            lib = ctypes.cdll.LoadLibrary(path)
            lib.LGBM_GetLastError.restype = ctypes.c_char_p
            _LIB = lib
        return _LIB


def _check(ret: int) -> None:
    if ret != 0:
        raise NativeError(_lib().LGBM_GetLastError().decode("utf-8", "replace"))


class Booster:
    """A LightGBM booster loaded from its model text, predicting through lib_lightgbm.

    `predict(x, num_threads=…)` and `model_to_string()` behave as `lightgbm.Booster`'s;
    `to_lightgbm()` builds the package's Booster (importing it) for training from it."""

    def __init__(self, model_str: str):
        if not isinstance(model_str, str):  # (a damaged model document)
            raise NativeError(f"a booster's model text is a {type(model_str).__name__}, not text")
        self.text = model_str
        handle = ctypes.c_void_p()
        iterations = ctypes.c_int(0)
        _check(
            _lib().LGBM_BoosterLoadModelFromString(model_str.encode(), ctypes.byref(iterations), ctypes.byref(handle))
        )
        self._handle = handle
        self._free = weakref.finalize(self, _lib().LGBM_BoosterFree, handle)
        n = ctypes.c_int(0)
        _check(_lib().LGBM_BoosterGetNumFeature(handle, ctypes.byref(n)))
        self.num_features = n.value
        _check(_lib().LGBM_BoosterGetNumClasses(handle, ctypes.byref(n)))
        if n.value != 1:  # (`predict` writes one number a row)
            raise NativeError(f"a model of {n.value} classes: only single-output models predict here")

    def model_to_string(self) -> str:
        return self.text

    def predict(self, x: np.ndarray, num_threads: int = 0) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise NativeError(f"expected rows of {self.num_features} features, got an array of shape {x.shape}")
        out = np.empty(x.shape[0], dtype=np.float64)
        if not len(x):
            return out
        n = ctypes.c_int64(0)
        _check(
            _lib().LGBM_BoosterPredictForMat(
                self._handle,
                x.ctypes.data_as(ctypes.c_void_p),
                ctypes.c_int(_C_API_DTYPE_FLOAT64),
                ctypes.c_int32(x.shape[0]),
                ctypes.c_int32(x.shape[1]),
                ctypes.c_int(1),  # row-major
                ctypes.c_int(_C_API_PREDICT_NORMAL),
                ctypes.c_int(0),  # from the first iteration
                ctypes.c_int(-1),  # to the last
                f"num_threads={int(num_threads)}".encode(),
                ctypes.byref(n),
                out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
            )
        )
        if n.value != len(out):
            raise NativeError(f"lib_lightgbm wrote {n.value} predictions for {len(out)} rows")
        return out

    def to_lightgbm(self):
        import lightgbm as lgb

        return lgb.Booster(model_str=self.text)


def to_lightgbm(booster):
    """The `lightgbm.Booster` for a booster of either kind (training continues from it)."""
    return booster.to_lightgbm() if isinstance(booster, Booster) else booster
