"""Runs the FileCheck IR tests under tests/filecheck with lit."""

import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def test_filecheck_suite():
    if not (shutil.which("filecheck") and shutil.which("tilecraft-opt") and shutil.which("lit")):
        pytest.skip("filecheck / tilecraft-opt not on PATH (pip install -e '.[test]')")
    proc = subprocess.run(
        [shutil.which("lit") or "lit", "-v", os.path.join(HERE, "filecheck")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
