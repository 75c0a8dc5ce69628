"""Tilecraft: an MLIR compiler for PyTorch models driven by learned cost models.

Kept light on purpose: importing `tilecraft` pulls in no stage. See `tilecraft.driver`.
"""

__version__ = "0.1.0"
