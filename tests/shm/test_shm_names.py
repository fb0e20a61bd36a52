import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockfabric.shm import names

INSTANCE = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=32)
TAG = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,20}", fullmatch=True).filter(
    lambda t: t != "manifest"
)


@pytest.mark.parametrize("bad", ["", "a" * 33, "a.b", "a/b", "a b", "é", "x\n"])
def test_invalid_instance_names(bad):
    with pytest.raises(ValueError, match="invalid instance name"):
        names.validate_instance(bad)


@pytest.mark.parametrize("bad", ["", ".x", "a/b", "manifest", "x" * 65])
def test_invalid_tags(bad):
    with pytest.raises(ValueError, match="invalid object tag"):
        names.object_name("inst", bad)


def test_name_forms():
    assert names.object_name("i1", "pool") == "blockfabric.i1.pool"
    assert names.posix_name("i1", "pool") == "/blockfabric.i1.pool"
    assert str(names.sem_path("i1", "pool")) == "/dev/shm/sem.blockfabric.i1.pool"
    assert str(names.manifest_path("i1")) == "/dev/shm/blockfabric.i1.manifest"


@given(INSTANCE, TAG)
def test_parse_roundtrip(inst, tag):
    name = names.object_name(inst, tag)
    for form in (name, "/" + name, "sem." + name, "/dev/shm/sem." + name, "/mnt/huge/" + name):
        assert names.parse_object_name(form) == (inst, tag)


@pytest.mark.parametrize(
    "other",
    [
        "foo",
        "blockfabric",
        "blockfabric.x",
        "sem.other.a.b",
        "blockfabricx.a.b",
        "blockfabric.a b.c",
    ],
)
def test_parse_rejects_foreign(other):
    assert names.parse_object_name(other) is None


def test_run_dir_follows_env(tmp_path, monkeypatch):
    d = tmp_path / "deep" / "run"
    monkeypatch.setenv("BLOCKFABRIC_RUN_DIR", str(d))
    assert names.RUN_DIR == d
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    monkeypatch.delenv("BLOCKFABRIC_RUN_DIR")
    assert str(names.run_dir()) == names.DEFAULT_RUN_DIR
