import json
import os
import subprocess
import sys

import psutil
import pytest

from blockfabric.shm import names
from blockfabric.shm.manifest import Manifest

ADDER = """
import sys
from blockfabric.shm.manifest import Manifest
inst, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = Manifest(inst)
for i in range(n):
    m.add(f"blockfabric.{inst}.p{who}-{i}", "shm", f"/dev/shm/x{who}-{i}", i)
"""


def test_add_load_remove(instance):
    m = Manifest(instance)
    assert not m.exists
    e = m.add(f"blockfabric.{instance}.a", "shm", f"/dev/shm/blockfabric.{instance}.a", 4096)
    m.add(f"blockfabric.{instance}.a", "sem", f"/dev/shm/sem.blockfabric.{instance}.a", 0)
    assert e.owner_pid == os.getpid()
    assert e.owner_ctime == psutil.Process().create_time()
    d = json.loads(names.manifest_path(instance).read_text())
    assert d["instance"] == instance
    assert d["created"] > 0
    assert [(o["name"], o["kind"], o["size"]) for o in d["objects"]] == [
        (f"blockfabric.{instance}.a", "shm", 4096),
        (f"blockfabric.{instance}.a", "sem", 0),
    ]
    loaded = Manifest.load(instance)
    assert loaded.owner_pids() == [(os.getpid(), e.owner_ctime)]
    assert instance in Manifest.list_instances()
    assert loaded.entry(f"blockfabric.{instance}.a", "sem").kind == "sem"
    assert m.remove(f"blockfabric.{instance}.a", "sem")
    assert not m.remove(f"blockfabric.{instance}.a", "sem")
    assert [o.kind for o in Manifest.load(instance).objects] == ["shm"]
    # Removing the last entry removes the file.
    assert m.remove(f"blockfabric.{instance}.a")
    assert not names.manifest_path(instance).exists()
    assert instance not in Manifest.list_instances()
    assert Manifest.load(instance).objects == []


def test_bad_kind(instance):
    with pytest.raises(ValueError, match="kind"):
        Manifest(instance).add("x", "file", "/x", 0)


def test_corrupt_manifest(instance):
    names.manifest_path(instance).write_text("{not json")
    with pytest.raises(ValueError, match="corrupt manifest"):
        Manifest.load(instance)


def test_concurrent_adders_lose_nothing(instance):
    procs = [
        subprocess.Popen([sys.executable, "-c", ADDER, instance, str(w), "25"]) for w in range(4)
    ]
    for p in procs:
        assert p.wait(60) == 0
    objs = Manifest.load(instance).objects
    assert len(objs) == 100
    assert {o.name for o in objs} == {
        f"blockfabric.{instance}.p{w}-{i}" for w in range(4) for i in range(25)
    }
    assert len({o.owner_pid for o in objs}) == 4
