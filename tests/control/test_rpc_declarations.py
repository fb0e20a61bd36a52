"""Each RPC is declared once (control/registry.py): the command line, the help,
the schema and README's table all come from that declaration, and the
declaration is compared with SPDK rpc.py's argument forms (spdk_rpc_forms.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from spdk_rpc_forms import NOT_DECLARED, NOT_IN_SPDK, SPDK_FORMS

import blockfabric.control.methods  # noqa: F401  (registers every method)
from blockfabric.control import rpc_cli
from blockfabric.control.registry import REGISTRY, Method, Param, Registry, rpc_method


def _norm(opt: str) -> str:
    return opt[:2] + opt[2:].replace("_", "-") if opt.startswith("--") else opt


def _token(p: Param) -> str:
    if p.pos is not None:
        return p.dest + ("" if p.required else "?")
    if p.toggle:
        return "--[no-]" + (p.option_strings()[-1][2:])
    tok = "/".join(_norm(o) for o in p.option_strings())
    required = p.required and p.cli_default is None
    return tok + ("!" if required else "")


def declared_form(m: Method) -> tuple[list[str], set[str]]:
    """(positionals in order, options) of the method's SPDK-compatible arguments."""
    args = [p for p in m.cli_params() if p.spdk]
    pos = [_token(p) for p in sorted((p for p in args if p.pos is not None), key=lambda p: p.pos)]
    return pos, {_token(p) for p in args if p.pos is None}


def recorded_form(form: str) -> tuple[list[str], set[str]]:
    toks = form.split()
    pos = [t for t in toks if not t.startswith("-")]
    opts = set()
    for t in toks:
        if t.startswith("-"):
            opts.add("/".join(_norm(o) for o in t.split("/")))
    return pos, opts


def form_differences(name: str, m: Method, form: str) -> list[str]:
    want_pos, want_opts = recorded_form(form)
    have_pos, have_opts = declared_form(m)
    missing_ok = {tok for (meth, tok), _ in NOT_DECLARED.items() if meth == name}
    out = []
    if have_pos != want_pos:
        out.append(f"{name}: positionals {have_pos}, rpc.py has {want_pos}")
    for t in sorted(want_opts - have_opts - missing_ok):
        out.append(f"{name}: rpc.py has {t}, the declaration does not")
    for t in sorted(have_opts - want_opts):
        out.append(f"{name}: declared {t}, rpc.py does not have it (spdk=False if an extension)")
    for t in sorted(missing_ok & have_opts):
        out.append(f"{name}: {t} is declared now; drop it from NOT_DECLARED")
    return out


def test_every_method_has_spdk_form_or_is_an_extension() -> None:
    names = set(REGISTRY.methods)
    unknown = names - set(SPDK_FORMS) - NOT_IN_SPDK
    assert not unknown, (
        "record SPDK rpc.py's form in tests/control/spdk_rpc_forms.py "
        f"(or list the method in NOT_IN_SPDK): {sorted(unknown)}"
    )
    stale = (set(SPDK_FORMS) | NOT_IN_SPDK) - names
    assert not stale, f"recorded but not implemented: {sorted(stale)}"


def test_declarations_match_spdk_rpc_py_forms() -> None:
    bad = []
    for name, form in sorted(SPDK_FORMS.items()):
        bad += form_differences(name, REGISTRY.methods[name], form)
    assert not bad, "\n".join(bad)


def test_form_comparison_finds_a_difference() -> None:
    reg = Registry()

    @rpc_method(
        "bdev_x_create",
        Param("name", str, short="-n"),
        Param("size", int, pos=0),
        Param("ext", bool, required=False, spdk=False),
        registry=reg,
    )
    def _h(ctx: object, **_: object) -> None: ...

    m = reg.methods["bdev_x_create"]
    assert form_differences("bdev_x_create", m, "size -n/--name!") == []
    assert form_differences("bdev_x_create", m, "size -b/--name!") == [
        "bdev_x_create: rpc.py has -b/--name!, the declaration does not",
        "bdev_x_create: declared -n/--name!, rpc.py does not have it (spdk=False if an extension)",
    ]
    assert form_differences("bdev_x_create", m, "size other -n/--name!")[0].startswith(
        "bdev_x_create: positionals"
    )
    assert form_differences("bdev_x_create", m, "size -n/--name") != []  # required differs


@pytest.mark.parametrize("name", sorted(REGISTRY.methods))
def test_help_shows_every_argument(name: str) -> None:
    parser, names = rpc_cli.build_method_parser()
    assert name in names
    sub = next(a for a in parser._actions if a.dest == "called_rpc_name")
    # argparse types _actions as Action; the sub-parsers action has .choices
    text = sub.choices[name].format_help()  # type: ignore[attr-defined]
    m = REGISTRY.methods[name]
    for p in m.cli_params():
        shown = p.dest if p.pos is not None else p.option_strings()[0]
        assert shown in text, f"{name} --help does not show {shown}"
        if p.help:
            assert p.help.split()[0] in text
    hidden = [p.name for p in m.params if not p.cli]
    for h in hidden:
        assert h in text  # named as "send them with --params"


def test_help_through_the_command() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "blockfabric.tools.cli", "rpc", "bdev_malloc_create", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    for s in ("total_size", "block_size", "-b NAME, --name NAME", "Name of the bdev", "--params"):
        assert s in r.stdout


def test_aliases_have_the_form_of_their_method() -> None:
    for old, new in (
        ("construct_target_node", "iscsi_create_target_node"),
        ("add_portal_group", "iscsi_create_portal_group"),
        ("construct_aio_bdev", "bdev_aio_create"),
    ):
        argv = {
            "iscsi_create_target_node": ["T", "A", "Malloc0:0", "1:2", "64", "-d"],
            "iscsi_create_portal_group": ["1", "127.0.0.1:3260"],
            "bdev_aio_create": ["/tmp/f", "Aio0", "4096", "-r"],
        }[new]
        m_old, p_old, _ = rpc_cli.parse_method_args([old, *argv])
        m_new, p_new, _ = rpc_cli.parse_method_args([new, *argv])
        assert (m_old, m_new) == (old, new) and p_old == p_new


def test_schema_answers_every_declaration() -> None:
    schema = REGISTRY.call(None, "rpc_get_methods", {"include_schema": True})
    json.dumps(schema)  # plain data
    by_name = {m["name"]: m for m in schema}
    assert set(by_name) == set(REGISTRY.methods)
    s = by_name["bdev_malloc_create"]
    assert s["aliases"] == ["construct_malloc_bdev"]
    p = {x["name"]: x for x in s["params"]}
    assert p["num_blocks"]["type"] == "integer" and p["num_blocks"]["min"] == 1
    assert p["num_blocks"]["required"] and "cli" not in p["num_blocks"]
    assert p["name"]["cli"] == {"options": ["-b", "--name"]}
    assert p["block_size"]["cli"] == {"position": 1, "name": "block_size"}
    assert s["cli_extra"][0]["name"] == "total_size"
    la = {x["name"]: x for x in by_name["nvmf_subsystem_add_listener"]["params"]}
    assert [f["name"] for f in la["listen_address"]["fields"]][:2] == ["trtype", "traddr"]
    # plain names stay the default answer
    assert "bdev_malloc_create" in REGISTRY.call(None, "rpc_get_methods", {})


def test_declaration_errors_are_caught_at_import() -> None:
    reg = Registry()
    with pytest.raises(ValueError, match="option -b"):
        rpc_method("m", Param("a", short="-b"), Param("b", short="-b"), registry=reg)(print)
    with pytest.raises(ValueError, match="positions"):
        rpc_method("m2", Param("a", pos=1), registry=reg)(print)
    with pytest.raises(ValueError, match="short option"):
        Param("a", short="b")
    with pytest.raises(ValueError, match="positional"):
        Param("a", pos=0, short="-a")
