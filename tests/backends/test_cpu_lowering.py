"""CPU lowering: the LLVM options the JIT sets for its process."""

import subprocess
import sys

SCRIPT = """
from tilecraft.backends.cpu import lowering
lowering.set_llvm_options()
lowering.set_llvm_options()  # a second call must not reach LLVM's parser (it exits on a repeat)
from tilecraft import driver
fn = driver.compile_model("mlp").fn
print("ok", lowering._llvm_options_set)
"""


def test_llvm_options_set_once_and_code_still_compiles():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["ok", "True"]
