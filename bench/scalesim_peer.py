"""Independent GEMM cycle counts from SCALE-Sim 3.0.0 (a peer for the analytical cost model).

SCALE-Sim needs numpy<2, so it lives in its own venv (`ensure_venv`) and runs in a subprocess;
this file imports nothing outside the standard library and nothing from tilecraft.

    python bench/scalesim_peer.py [--dataflow ws|os|is] [--rows 16] [--cols 16]

Shapes are ours: (M, K, N) = (rows of A, reduction, columns of the output). SCALE-Sim's GEMM
topology csv is "Layer, M, N, K," and its loader turns a row into a conv with an M x K ifmap,
a 1 x K filter and N filters (topology_utils.load_arrays_gemm), so its M is our M (output
rows), its K our K (reduction) and its N our N (output columns): the same letters, just in the
order M, N, K. (The docstring of topologies.get_transformed_mnk_dimensions names them
differently; the loader is what counts.) Each row must end with a comma: the loader drops the
last comma-separated field.

With no SRAM stalls (the default: 32 MiB per scratchpad, bandwidth estimated), SCALE-Sim's
"Total Cycles" on an R x C array is exactly `closed_form_cycles` below.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCALESIM_VERSION = "3.0.0"
DEFAULT_VENV = Path(__file__).resolve().parent.parent / ".cache" / "scalesim-venv"
_REQUIREMENTS = [f"scalesim=={SCALESIM_VERSION}", "numpy<2"]

# Runs inside the scalesim venv: argv[1] is a JSON list of [config, topology, out_dir]; each
# GEMM is its own one-layer run (layers are independent), spread over a process pool.
_RUNNER = """
import json, os, sys
from multiprocessing import Pool

def run(job):
    from scalesim.layout_utils import layouts
    from scalesim.scale_config import scale_config
    from scalesim.simulator import simulator
    from scalesim.topology_utils import topologies

    cfg, topo, out = job
    c = scale_config()
    c.read_conf_file(cfg)
    t = topologies()
    t.load_arrays(topofile=topo, mnk_inputs=True)
    s = simulator()
    s.set_params(config_obj=c, topo_obj=t, layout_obj=layouts(), top_path=out, verbosity=False, save_trace=False)
    s.run()

if __name__ == "__main__":
    jobs = json.loads(sys.argv[1])
    with Pool(min(len(jobs), int(sys.argv[2]))) as pool:
        pool.map(run, jobs, chunksize=1)
"""

_CONFIG = """[general]
run_name = run

[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: {sram_kb}
FilterSramSzkB: {sram_kb}
OfmapSramSzkB: {sram_kb}
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Bandwidth: {bw}
Dataflow: {dataflow}
MemoryBanks: 1
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: {bw}
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: {bw}
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40

[run_presets]
InterfaceBandwidth: {bw_mode}
UseRamulatorTrace: False
"""


def ensure_venv(path: Path = DEFAULT_VENV) -> Path:
    """Create (once) a python3.11 venv holding scalesim==3.0.0 and numpy<2; return its python."""
    path = Path(path)
    python = path / "bin" / "python"
    marker = path / f".scalesim-{SCALESIM_VERSION}-ok"
    if marker.exists() and python.exists():
        return python
    if not python.exists():
        base = shutil.which("python3.11") or sys.executable
        subprocess.run([base, "-m", "venv", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *_REQUIREMENTS], check=True)
    subprocess.run([str(python), "-c", "import scalesim.simulator"], check=True)
    marker.touch()
    return python


def closed_form_cycles(m: int, k: int, n: int, *, rows: int = 16, cols: int = 16, dataflow: str = "ws") -> int:
    """SCALE-Sim 3.0.0's stall-free "Total Cycles" (checked against it; the -1: it is 0-indexed).

    ws: weights K x N in folds of rows x cols, the M activation rows stream through;
    os: outputs M x N in folds of rows x cols, K streams; is: inputs K x M in folds, N streams.
    """
    c = math.ceil
    if dataflow == "ws":
        return c(k / rows) * c(n / cols) * (2 * rows + cols + m - 2) - 1
    if dataflow == "os":
        return c(m / rows) * c(n / cols) * (rows + cols + k - 2) - 1
    if dataflow == "is":
        return c(k / rows) * c(m / cols) * (2 * rows + cols + n - 2) - 1
    raise ValueError(f"dataflow must be ws, os or is, not {dataflow!r}")


def _read_report(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        header, row = list(csv.reader(f))[:2]
    return {h.strip(): float(v) for h, v in zip(header, row) if h.strip() and h.strip() != "LayerID"}


def gemm_cycles(
    shapes: list[tuple[int, int, int]],
    *,
    rows: int = 16,
    cols: int = 16,
    dataflow: str = "ws",
    python: Path | str | None = None,
    sram_kb: int = 32 * 1024,
    bandwidth: int | None = None,
    jobs: int | None = None,
    timeout: float | None = None,
) -> list[dict]:
    """Simulate each (M, K, N) GEMM with SCALE-Sim on a rows x cols array; one dict per shape.

    sram_kb: size of each of the three scratchpads. bandwidth: None lets SCALE-Sim estimate the
    DRAM bandwidth ("CALC", never stalls on reads); an int fixes it in words/cycle ("USER"), which
    with small scratchpads gives stall cycles. jobs: worker processes (default: all CPUs).
    SCALE-Sim's word is 1 byte, so its DRAM word counts are bytes.
    """
    if dataflow not in ("ws", "os", "is"):
        raise ValueError(f"dataflow must be ws, os or is, not {dataflow!r}")
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if any(len(s) != 3 or min(s) < 1 for s in shapes):
        raise ValueError(f"shapes must be positive (M, K, N) triples: {shapes}")
    if not shapes:
        return []
    python = str(python or ensure_venv())
    with tempfile.TemporaryDirectory(prefix="scalesim-") as tmp:
        tmp = Path(tmp)
        cfg = tmp / "scale.cfg"
        bw_mode = "CALC" if bandwidth is None else "USER"
        bw = 10 if bandwidth is None else bandwidth
        cfg.write_text(_CONFIG.format(rows=rows, cols=cols, sram_kb=sram_kb, bw=bw, bw_mode=bw_mode, dataflow=dataflow))
        work = []
        for i, (m, k, n) in enumerate(shapes):
            topo = tmp / f"gemm{i}.csv"
            topo.write_text(f"Layer, M, N, K,\ngemm{i}, {m}, {n}, {k},\n")  # SCALE-Sim's order: M, N, K
            work.append([str(cfg), str(topo), str(tmp / f"out{i}")])
        runner = tmp / "runner.py"
        runner.write_text(_RUNNER)
        proc = subprocess.run(
            [python, str(runner), json.dumps(work), str(jobs or os.cpu_count() or 1)],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"SCALE-Sim failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
        results = []
        for i, (m, k, n) in enumerate(shapes):
            out = tmp / f"out{i}" / "run"
            comp = _read_report(out / "COMPUTE_REPORT.csv")
            detail = _read_report(out / "DETAILED_ACCESS_REPORT.csv")
            bw_rep = _read_report(out / "BANDWIDTH_REPORT.csv")
            results.append(
                {
                    "M": m,
                    "K": k,
                    "N": n,
                    "compute_cycles": int(comp["Total Cycles"]),
                    "stall_cycles": int(comp["Stall Cycles"]),
                    "utilization": comp["Overall Util %"],
                    "compute_util": comp["Compute Util %"],
                    "mapping_efficiency": comp["Mapping Efficiency %"],
                    # Starts with the prefetch of the (huge) SRAMs, so it grows with sram_kb.
                    "cycles_incl_prefetch": int(comp["Total Cycles (incl. prefetch)"]),
                    "sram_ifmap_reads": int(detail["SRAM IFMAP Reads"]),
                    "sram_filter_reads": int(detail["SRAM Filter Reads"]),
                    "sram_ofmap_writes": int(detail["SRAM OFMAP Writes"]),
                    "dram_ifmap_read_bytes": int(detail["DRAM IFMAP Reads"]),
                    "dram_filter_read_bytes": int(detail["DRAM Filter Reads"]),
                    # ws/is write an M x N partial result per K fold: M * N * ceil(K / rows).
                    "dram_ofmap_write_bytes": int(detail["DRAM OFMAP Writes"]),
                    "report": {**comp, **bw_rep, **detail},
                }
            )
        return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataflow", default="ws", choices=["ws", "os", "is"])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--cols", type=int, default=16)
    args = ap.parse_args()
    shapes = [(16, 16, 16), (64, 256, 256), (256, 576, 64), (3136, 64, 64), (49, 4608, 512), (128, 256, 768)]
    python = ensure_venv()
    t0 = time.perf_counter()
    res = gemm_cycles(shapes, rows=args.rows, cols=args.cols, dataflow=args.dataflow, python=python)
    took = time.perf_counter() - t0
    print(f"SCALE-Sim {SCALESIM_VERSION}, {args.rows}x{args.cols} {args.dataflow}, {took:.1f} s")
    cols = ["M", "K", "N", "cycles", "formula", "stalls", "util%", "dram_rd_B", "dram_wr_B"]
    print("".join(f"{c:>11}" for c in cols))
    for r in res:
        form = closed_form_cycles(r["M"], r["K"], r["N"], rows=args.rows, cols=args.cols, dataflow=args.dataflow)
        rd = r["dram_ifmap_read_bytes"] + r["dram_filter_read_bytes"]
        vals = [r["M"], r["K"], r["N"], r["compute_cycles"], form, r["stall_cycles"]]
        print("".join(f"{v:>11}" for v in vals) + f"{r['utilization']:>11.1f}{rd:>11}{r['dram_ofmap_write_bytes']:>11}")


if __name__ == "__main__":
    main()
