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
    assert a is not b and a.boosters is not b.boosters  # (each caller its own object and dicts)
    assert all(a.boosters[n] is b.boosters[n] for n in a.boosters)  # (the trees read once, shared)
    a.foreign_registers = True
    assert not hasattr(cm.load(path, target), "foreign_registers")  # (a caller's flag stays its own)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten (adapt installs in place)
    assert cm.load(path, target).boosters["latency"] is not a.boosters["latency"]


def test_updating_a_loaded_model_leaves_the_next_load_as_the_file_says(tmp_path):
    """`update` (tuning) writes into the model's boosters, offsets and meta: a copy's
    changes never reach the cached model a later `load` copies."""
    from tilecraft.backends.cpu.target import Target
    from tilecraft.costmodel import model as cm

    target = Target.parse("cpu")
    path = str(tmp_path / "m.json.gz")
    shutil.copy(cm.choose(target).path, path)
    a = cm.load(path, target)
    before = (dict(a.boosters), dict(a.offsets), repr(a.meta))
    a.boosters["latency"] = None
    a.offsets["some kernel"] = 1.0
    a.meta.setdefault("offset_counts", {})["some kernel"] = 3
    b = cm.load(path, target)
    assert (dict(b.boosters), dict(b.offsets), repr(b.meta)) == before
