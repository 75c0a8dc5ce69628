"""The accelerator backend: a VTA-style GEMM accelerator (ISA in `dialects/accel.py`), its
target description, integer-only lowering, simulator and runtime."""
