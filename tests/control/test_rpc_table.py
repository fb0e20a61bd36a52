"""README's RPC table is generated from the declarations and up to date."""

from __future__ import annotations

from pathlib import Path

import pytest

import blockfabric.control.methods  # noqa: F401  (registers every method)
from blockfabric.control.registry import REGISTRY
from blockfabric.tools import rpc_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_table_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    assert rpc_table.splice(text, rpc_table.render()) == text, (
        "README.md's RPC table is stale: run python -m blockfabric.tools.rpc_table --write"
    )


def test_every_method_and_param_is_in_the_table() -> None:
    table = rpc_table.render()
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines()[2:]}
    assert set(rows) == set(REGISTRY.methods)
    for name, m in REGISTRY.methods.items():
        for p in m.params:
            assert f"`{p.name}`" in rows[name], (name, p.name)
        for a in m.aliases:
            assert f"`{a}`" in rows[name]
    assert "`TOTAL_SIZE BLOCK_SIZE [-b NAME]" in rows["bdev_malloc_create"]
    assert "NAME ALIAS_NAME LUNS PG_IG_MAPS QUEUE_DEPTH" in rows["iscsi_create_target_node"]


def test_check_finds_a_stale_table(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n{rpc_table.BEGIN}\n| old |\n{rpc_table.END}\nrest\n")
    assert rpc_table.main(["--check", "--readme", str(stale)]) == 1
    assert rpc_table.main(["--write", "--readme", str(stale)]) == 0
    assert rpc_table.main(["--check", "--readme", str(stale)]) == 0
    text = stale.read_text()
    assert text.startswith("# x\n") and text.endswith(f"{rpc_table.END}\nrest\n")
    with pytest.raises(ValueError, match="no"):
        rpc_table.splice("no markers", "t")
