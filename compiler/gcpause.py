"""Python's cyclic garbage collector paused while the frontend traces a model and while
the driver compiles it.

On the compiler floor, used by the frontend and `driver.compile_model`. torch.export allocates hundreds of thousands
of short-lived Python objects (fake tensors, FX nodes, pytree specs, captured tracebacks),
and each burst triggers collections that scan every young object and, now and then, every
object of the process. Paused (median of 4 alternations in one process): MobileNet-V2's
export and import to linalg 1.66 s against 1.83, ResNet-18's 0.74 against 0.90, bert_mini's
0.86 against 0.83. The stages after it gain less often: their young collections are cheap,
but now and then the compile's objects trigger a full one, which scans the whole process
(0.25-0.4 s in a compile of resnet18 or bert_mini in a process holding one model, measured
with `gc.callbacks`; more in one holding torch, ONNX Runtime and OpenVINO). The garbage
left in cycles is collected when the collector resumes, as it would have been.
"""

from __future__ import annotations

import contextlib
import gc
import threading

ENABLED = True  # (off: compiles run with the collector as the caller left it)
_LOCK = threading.Lock()
_depth = 0
_was_enabled = False


@contextlib.contextmanager
def paused():
    """The collector off for the block (nested and concurrent compiles: off until the last
    one ends), then back as it was, or left off where the caller had turned it off."""
    global _depth, _was_enabled
    if not ENABLED:
        yield
        return
    with _LOCK:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
