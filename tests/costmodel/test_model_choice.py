"""A model file is read once per process, and again once it changes."""

import os
import shutil


def test_a_model_file_is_read_once_until_it_changes(tmp_path):
    from tilecraft.backends.cpu.target import Target
    from tilecraft.costmodel import model as cm

    target = Target.parse("cpu")
    path = str(tmp_path / "m.json.gz")
    shutil.copy(cm.choose(target).path, path)
    a, b = cm.load(path, target), cm.load(path, target)
    assert a is not b and a.boosters is b.boosters  # (each caller its own object; the trees shared)
    a.foreign_registers = True
    assert not hasattr(cm.load(path, target), "foreign_registers")  # (a caller's flag stays its own)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten (adapt installs in place)
    assert cm.load(path, target).boosters is not a.boosters
