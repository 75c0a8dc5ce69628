"""The CPU inference runtimes users pick, as peers for the benchmarks: ONNX Runtime and
OpenVINO, each built for a thread count and checked against eager
before it is timed.

`runtime(name, model, inputs, threads)` returns a callable that runs the model on the
example inputs (converted once), or raises `PeerUnavailable` (the package is not
installed, or the export or the conversion fails: a peer that cannot take a model is
reported, not fatal). Outputs come back as torch tensors, for `driver.compare`.
"""

from __future__ import annotations

import os
import tempfile

import torch

PEERS = ("onnxruntime", "openvino")


class PeerUnavailable(RuntimeError):
    pass


def runtime(name: str, model: torch.nn.Module, inputs: tuple, threads: int):
    if name == "onnxruntime":
        return _onnxruntime(model, inputs, threads)
    if name == "openvino":
        return _openvino(model, inputs, threads)
    raise ValueError(f"unknown peer {name!r} (one of {', '.join(PEERS)})")


def _numpy(inputs) -> list:
    return [x.detach().numpy() if isinstance(x, torch.Tensor) else x for x in inputs]


def _onnxruntime(model, inputs, threads: int):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise PeerUnavailable(f"onnxruntime is not installed ({exc})") from None
    with tempfile.TemporaryDirectory(prefix="tilecraft-onnx-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        try:
            with torch.no_grad():
                torch.onnx.export(model, tuple(inputs), path, dynamo=False, opset_version=17)
        except Exception as exc:  # the exporter's failure on this model
            raise PeerUnavailable(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc)[:200]}") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feed = dict(zip(names, _numpy(inputs)))

    def run():
        return [torch.from_numpy(o) for o in session.run(None, feed)]

    return run


def _openvino(model, inputs, threads: int):
    try:
        import openvino as ov
    except ImportError as exc:
        raise PeerUnavailable(f"openvino is not installed ({exc})") from None
    try:
        with torch.no_grad():
            converted = ov.convert_model(model, example_input=tuple(inputs))
        # f32 throughout: on a CPU with AMX or AVX512-BF16 OpenVINO otherwise infers in bf16
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        compiled = ov.Core().compile_model(converted, "CPU", config)
    except Exception as exc:
        raise PeerUnavailable(f"openvino failed: {type(exc).__name__}: {str(exc)[:200]}") from None
    request = compiled.create_infer_request()
    arrays = _numpy(inputs)

    def run():
        request.infer(arrays)
        return [torch.from_numpy(request.get_output_tensor(i).data.copy()) for i in range(len(compiled.outputs))]

    return run
