"""NVMe reservations, sans-I/O (issue 12 item 2): the state machine of one
namespace, the command-behaviour table for every type x role x command, the
Report structures, the notification log, PTPL persistence and the shared
access rule with SCSI persistent reservations."""

from __future__ import annotations

import json
import os
import struct

import pytest

from blockfabric.transports import resv_common as RC
from blockfabric.transports.nvmf import reservation as R
from blockfabric.transports.nvmf import reservation_ptpl, spec
from blockfabric.transports.scsi import pr as scsi_pr

A = "aa" * 16  # three hosts (128-bit identifiers)
B = "bb" * 16
C = "cc" * 16
KA, KB, KC = 0xA1, 0xB2, 0xC3

WE, EA, WERO, EARO, WEAR, EAAR = 1, 2, 3, 4, 5, 6

# The table "Command Behavior in the Presence of a Reservation" (NVMe base
# spec 2.0, 8.19.x), written out from the spec text, independent of the code:
# per type, (holder, registrant, non-registrant) x (read group, write group);
# A = allowed, C = Reservation Conflict. Under the all-registrants types
# every registrant is a holder.
SPEC_TABLE = {
    WE: {"holder": "AA", "registrant": "AC", "other": "AC"},
    EA: {"holder": "AA", "registrant": "CC", "other": "CC"},
    WERO: {"holder": "AA", "registrant": "AA", "other": "AC"},
    EARO: {"holder": "AA", "registrant": "AA", "other": "CC"},
    WEAR: {"holder": "AA", "registrant": "AA", "other": "AC"},
    EAAR: {"holder": "AA", "registrant": "AA", "other": "CC"},
}
READ_CMDS = {"read": spec.IO_READ, "compare": spec.IO_COMPARE, "verify": R.IO_VERIFY}
WRITE_CMDS = {
    "write": spec.IO_WRITE,
    "write_zeroes": spec.IO_WRITE_ZEROES,
    "dsm": spec.IO_DSM,
    "flush": spec.IO_FLUSH,
    "write_uncorrectable": spec.IO_WRITE_UNCOR,
    "copy": R.IO_COPY,
}


def reg(st: R.NsResv, host: str, key: int) -> R.Outcome:
    return st.register(host, R.RegisterCmd(R.REG_REGISTER, False, 0, 0, key))


def acq(st: R.NsResv, host: str, key: int, rtype: int, action: int = 0, prkey: int = 0):
    return st.acquire(host, R.AcquireCmd(action, False, rtype, key, prkey))


def rel(st: R.NsResv, host: str, key: int, rtype: int, action: int = 0) -> R.Outcome:
    return st.release(host, R.ReleaseCmd(action, False, rtype, key))


def held(rtype: int) -> R.NsResv:
    """A holds a reservation of ``rtype``; B is a registrant; C is not registered."""
    st = R.NsResv()
    assert reg(st, A, KA).status == 0 and reg(st, B, KB).status == 0
    assert acq(st, A, KA, rtype).status == 0
    return st


ROLES = {"holder": A, "registrant": B, "other": C}
CASES = [
    (rtype, role, name, op, write)
    for rtype in SPEC_TABLE
    for role in ROLES
    for write, cmds in ((False, READ_CMDS), (True, WRITE_CMDS))
    for name, op in cmds.items()
]


@pytest.mark.parametrize(
    "rtype,role,name,op,write", CASES, ids=[f"t{c[0]}-{c[1]}-{c[2]}" for c in CASES]
)
def test_command_behaviour_table(rtype: int, role: str, name: str, op: int, write: bool) -> None:
    st = held(rtype)
    view = R.ResvView(st.view())
    want = SPEC_TABLE[rtype][role][1 if write else 0] == "A"
    assert R.command_allowed(view, ROLES[role], op) is want


@pytest.mark.parametrize("rtype", list(SPEC_TABLE))
@pytest.mark.parametrize("role", list(ROLES))
def test_reservation_commands_per_role(rtype: int, role: str) -> None:
    """Report: never in conflict; Acquire / Release from a non-registrant
    (or with a wrong key): conflict; Register of a new host: allowed."""
    st = held(rtype)
    host = ROLES[role]
    assert st.report(16, True, 4096).status == 0
    v = R.ResvView(st.view())
    for op in R.RESV_OPCODES:
        assert R.command_allowed(v, host, op)  # keys decide, in the state machine
    key = {A: KA, B: KB, C: 0}[host]
    if role == "other":
        assert acq(st, C, 0x99, rtype).status == R.ST_RESV_CONFLICT
        assert rel(st, C, 0x99, rtype).status == R.ST_RESV_CONFLICT
        assert reg(st, C, KC).status == 0
    else:
        assert acq(st, host, key + 1, rtype).status == R.ST_RESV_CONFLICT  # wrong key
        assert rel(st, host, key + 1, rtype).status == R.ST_RESV_CONFLICT
        same = acq(st, host, key, rtype).status
        # acquiring what one already holds succeeds; a registrant cannot
        # acquire over another's reservation (unless all-registrants: it holds)
        holds = role == "holder" or rtype in (WEAR, EAAR)
        assert same == (0 if holds else R.ST_RESV_CONFLICT)
        other_type = WE if rtype != WE else EA
        assert acq(st, host, key, other_type).status == R.ST_RESV_CONFLICT


def test_no_reservation_no_conflict() -> None:
    st = R.NsResv()
    reg(st, A, KA)
    v = R.ResvView(st.view())
    assert v.kind is None
    for op in (*READ_CMDS.values(), *WRITE_CMDS.values()):
        assert R.command_allowed(v, C, op) and R.command_allowed(None, C, op)


# ------------------------------------------------------------------- Register
def test_register_unregister_replace_and_generation() -> None:
    st = R.NsResv()
    assert reg(st, A, KA).changed and st.gen == 1
    assert reg(st, A, KA).status == 0 and st.gen == 1  # same key again: no change
    assert reg(st, A, KA + 1).status == R.ST_RESV_CONFLICT  # registered, other key
    assert reg(st, B, 0).status == R.ST_INVALID_FIELD  # NRKEY 0
    rp = R.RegisterCmd(R.REG_REPLACE, False, 0, KA, 0x55)
    assert st.register(A, rp).status == 0 and st.regs[A] == 0x55 and st.gen == 2
    bad = R.RegisterCmd(R.REG_REPLACE, False, 0, KA, 0x66)  # CRKEY no longer matches
    assert st.register(A, bad).status == R.ST_RESV_CONFLICT
    ie = R.RegisterCmd(R.REG_REPLACE, True, 0, 0, 0x77)  # IEKEY: CRKEY ignored
    assert st.register(A, ie).status == 0 and st.regs[A] == 0x77
    # replace by a host not registered: only with IEKEY (it registers)
    assert st.register(B, R.RegisterCmd(R.REG_REPLACE, False, 0, 0, KB)).status == (
        R.ST_RESV_CONFLICT
    )
    assert st.register(B, R.RegisterCmd(R.REG_REPLACE, True, 0, 0, KB)).status == 0
    un = R.RegisterCmd(R.REG_UNREGISTER, False, 0, 0x12, 0)
    assert st.register(A, un).status == R.ST_RESV_CONFLICT  # wrong CRKEY
    assert st.register(A, un._replace(iekey=True)).status == 0 and A not in st.regs
    assert st.register(A, un).status == R.ST_RESV_CONFLICT  # not registered
    assert st.register(A, R.RegisterCmd(3, False, 0, 0, 1)).status == R.ST_INVALID_FIELD
    assert st.register(A, R.RegisterCmd(0, False, 1, 0, 1)).status == R.ST_INVALID_FIELD


def test_register_limit_is_bounded() -> None:
    st = R.NsResv()
    for i in range(R.MAX_REGISTRANTS):
        assert reg(st, f"{i:032x}", i + 1).status == 0
    assert reg(st, "ff" * 16, 1).status != 0
    assert len(st.regs) == R.MAX_REGISTRANTS


@pytest.mark.parametrize("rtype", [WE, EA, WERO, EARO])
def test_unregistering_the_holder_releases(rtype: int) -> None:
    st = held(rtype)
    out = st.register(A, R.RegisterCmd(R.REG_UNREGISTER, False, 0, KA, 0))
    assert out.status == 0 and st.rtype == 0
    # registrants-only types: the registrants lose access -> Reservation Released
    want = ((B, R.NOTICE_RES_RELEASED),) if rtype in (WERO, EARO) else ()
    assert out.notices == want


@pytest.mark.parametrize("rtype", [WEAR, EAAR])
def test_all_registrants_reservation_ends_with_the_last(rtype: int) -> None:
    st = held(rtype)
    assert st.register(A, R.RegisterCmd(R.REG_UNREGISTER, False, 0, KA, 0)).status == 0
    assert st.rtype == rtype and st.is_holder(B)
    assert st.register(B, R.RegisterCmd(R.REG_UNREGISTER, False, 0, KB, 0)).status == 0
    assert st.rtype == 0


# -------------------------------------------------------------------- Acquire
def test_acquire_rules() -> None:
    st = R.NsResv()
    reg(st, A, KA)
    assert acq(st, A, KA, 7).status == R.ST_INVALID_FIELD  # no type 7
    assert acq(st, A, KA, 0).status == R.ST_INVALID_FIELD
    assert acq(st, A, KA, WE, action=3).status == R.ST_INVALID_FIELD
    assert st.acquire(A, R.AcquireCmd(0, True, WE, KA, 0)).status == R.ST_INVALID_FIELD
    assert acq(st, A, KA, WE).status == 0 and st.holder == A
    assert acq(st, A, KA, WE).status == 0  # again: fine
    reg(st, B, KB)
    assert acq(st, B, KB, WE).status == R.ST_RESV_CONFLICT


@pytest.mark.parametrize("rtype", list(SPEC_TABLE))
@pytest.mark.parametrize("abort", [False, True])
def test_preempt_the_holder(rtype: int, abort: bool) -> None:
    st = held(rtype)
    reg(st, C, KC)
    action = R.ACQ_PREEMPT_ABORT if abort else R.ACQ_PREEMPT
    prkey = 0 if rtype in (WEAR, EAAR) else KA  # all-registrants: key 0 preempts all
    out = acq(st, B, KB, EA, action=action, prkey=prkey)
    assert out.status == 0
    assert st.rtype == EA and st.holder == B
    victims = (A, C) if rtype in (WEAR, EAAR) else (A,)
    assert set(st.regs) == {B, *(h for h in (C,) if h not in victims)}
    assert {h for h, t in out.notices if t == R.NOTICE_REG_PREEMPTED} == set(victims)
    assert set(out.abort) == (set(victims) if abort else set())
    if rtype not in (WEAR, EAAR):  # C kept its registration: its reservation was preempted
        assert (C, R.NOTICE_RES_PREEMPTED) in out.notices
    assert R.command_allowed(R.ResvView(st.view()), A, spec.IO_WRITE) is False


def test_preempt_a_registrant_and_errors() -> None:
    st = held(WE)
    reg(st, C, KC)
    out = acq(st, B, KB, WE, action=R.ACQ_PREEMPT, prkey=KC)  # C is not the holder
    assert out.status == 0 and C not in st.regs and st.holder == A
    assert out.notices == ((C, R.NOTICE_REG_PREEMPTED),)
    assert acq(st, B, KB, WE, action=R.ACQ_PREEMPT, prkey=0x999).status == R.ST_RESV_CONFLICT
    assert acq(st, B, KB, WE, action=R.ACQ_PREEMPT, prkey=0).status == R.ST_INVALID_FIELD
    # no reservation at all: preempt unregisters the matching registrants
    st2 = R.NsResv()
    reg(st2, A, KA), reg(st2, B, KB)
    assert acq(st2, A, KA, WE, action=R.ACQ_PREEMPT, prkey=KB).status == 0
    assert list(st2.regs) == [A] and st2.rtype == 0


def test_holder_changes_its_type_by_preempting_itself() -> None:
    st = held(WE)
    out = acq(st, A, KA, EARO, action=R.ACQ_PREEMPT, prkey=KA)
    assert out.status == 0 and st.rtype == EARO and st.holder == A and A in st.regs


# -------------------------------------------------------------------- Release
@pytest.mark.parametrize("rtype", list(SPEC_TABLE))
def test_release_and_notices(rtype: int) -> None:
    st = held(rtype)
    reg(st, C, KC)
    assert rel(st, C, KC, rtype).status == (0)  # not the holder (unless AR): no-op
    if rtype in (WEAR, EAAR):
        assert st.rtype == 0  # any registrant holds an all-registrants reservation
        return
    assert st.rtype == rtype
    assert rel(st, A, KA, rtype % 6 + 1).status == R.ST_INVALID_FIELD  # wrong type
    out = rel(st, A, KA, rtype)
    assert out.status == 0 and st.rtype == 0 and set(st.regs) == {A, B, C}
    want = set() if rtype in (WE, EA) else {(B, R.NOTICE_RES_RELEASED), (C, R.NOTICE_RES_RELEASED)}
    assert set(out.notices) == want
    assert rel(st, A, KA, rtype).status == 0  # nothing held: fine
    assert rel(st, A, KA + 5, rtype).status == R.ST_RESV_CONFLICT


def test_clear() -> None:
    st = held(EARO)
    reg(st, C, KC)
    gen = st.gen
    out = rel(st, B, KB, 0, action=R.REL_CLEAR)
    assert out.status == 0 and not st.regs and st.rtype == 0 and st.gen == gen + 1
    assert set(out.notices) == {(A, R.NOTICE_RES_PREEMPTED), (C, R.NOTICE_RES_PREEMPTED)}
    assert rel(st, B, KB, 0, action=2).status == R.ST_INVALID_FIELD


# --------------------------------------------------------------------- Report
def test_report_extended_and_64bit() -> None:
    st = held(WERO)
    out = st.report(16, True, 4096)
    b = out.data
    gen, rtype, regctl = struct.unpack_from("<IBH", b, 0)
    assert (gen, rtype, regctl) == (st.gen, WERO, 2) and len(b) == 64 + 2 * 64
    cntlid, rcsts = struct.unpack_from("<HB", b, 64)
    assert cntlid == 0xFFFF and rcsts == 1 and b[64 + 16 : 64 + 32] == bytes.fromhex(A)
    assert struct.unpack_from("<Q", b, 64 + 8)[0] == KA
    assert b[128 + 2] == 0 and struct.unpack_from("<Q", b, 128 + 8)[0] == KB
    # EDS and the requester's identifier form must agree
    assert st.report(16, False, 4096).status == R.ST_HOSTID_INCONSISTENT
    assert st.report(8, True, 4096).status == R.ST_HOSTID_INCONSISTENT
    st64 = R.NsResv()
    reg(st64, "0102030405060708", 0x42)
    d = st64.report(8, False, 4096).data
    assert len(d) == 24 + 24 and d[24 + 8 : 24 + 16] == bytes.fromhex("0102030405060708")
    assert struct.unpack_from("<Q", d, 24 + 16)[0] == 0x42
    # bounded by the host's length: never more than asked
    assert len(st.report(16, True, 80).data) == 80
    assert len(st.report(16, True, 8).data) == 8


# ------------------------------------------------------------ notification log
def test_notification_log_masks_and_count() -> None:
    cr = R.CtrlResv()
    assert cr.take_page(True) == bytes(64)  # empty
    assert cr.notice(1, R.NOTICE_REG_PREEMPTED)
    cr.masks[2] = 1 << R.NOTICE_RES_RELEASED
    assert not cr.notice(2, R.NOTICE_RES_RELEASED)  # masked
    assert cr.notice(2, R.NOTICE_RES_PREEMPTED)
    p = cr.take_page(True)
    count, ntype, avail, nsid = struct.unpack_from("<QBBxxI", p, 0)
    assert (count, ntype, avail, nsid) == (1, R.NOTICE_REG_PREEMPTED, 1, 1)
    count, ntype, avail, nsid = struct.unpack_from("<QBBxxI", cr.take_page(True), 0)
    assert (count, ntype, avail, nsid) == (2, R.NOTICE_RES_PREEMPTED, 0, 2)
    for _ in range(R.MAX_LOG_ENTRIES + 10):
        cr.notice(1, R.NOTICE_RES_RELEASED)
    assert len(cr.log) == R.MAX_LOG_ENTRIES  # bounded; the count shows what was lost
    assert struct.unpack_from("<Q", cr.take_page(False), 0)[0] == 2 + 10 + 1


# ------------------------------------------------------------------------ PTPL
def test_ptpl_cptpl_and_file(tmp_path) -> None:
    path = str(tmp_path / "ns1.ptpl")
    st = reservation_ptpl.load(path)  # no file yet: empty, capable
    assert st.ptpl_capable and not st.regs
    out = st.register(A, R.RegisterCmd(R.REG_REGISTER, False, R.CPTPL_SET, 0, KA))
    assert out.status == 0 and out.persist and st.ptpl
    assert acq(st, A, KA, EA).persist
    reservation_ptpl.save(path, st)
    back = reservation_ptpl.load(path)
    assert (back.regs, back.rtype, back.holder, back.ptpl) == ({A: KA}, EA, A, True)
    assert back.gen == st.gen
    # cleared: written once more, and nothing comes back
    out = st.set_ptpl(False)
    assert out.persist and not st.ptpl
    reservation_ptpl.save(path, st)
    assert not reservation_ptpl.load(path).regs
    # a namespace without a PTPL file refuses to set PTPL
    plain = R.NsResv()
    bad = R.RegisterCmd(R.REG_REGISTER, False, R.CPTPL_SET, 0, KA)
    assert plain.register(A, bad).status == R.ST_INVALID_FIELD and not plain.regs
    assert plain.set_ptpl(True).status == R.ST_INVALID_FIELD


def test_ptpl_damaged_file_is_ignored(tmp_path) -> None:
    p = tmp_path / "bad.ptpl"
    for junk in (b"{not json", b"[1, 2]", json.dumps({"ptpl": True, "registrants": [{}]}).encode()):
        p.write_bytes(junk)
        st = reservation_ptpl.load(str(p))
        assert not st.regs and st.ptpl_capable


def test_ptpl_file_is_written_durably(tmp_path, monkeypatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    st = reservation_ptpl.load(str(tmp_path / "x.ptpl"))
    reg(st, A, KA)
    reservation_ptpl.save(str(tmp_path / "x.ptpl"), st)
    assert len(synced) == 2  # the file, then its folder (the rename)
    assert not (tmp_path / "x.ptpl.tmp").exists()


# ------------------------------------------------------------------ shared rule
def test_scsi_and_nvme_share_the_access_rule() -> None:
    """The same kind gives the same answers through both specs' codes."""
    for spc_code, kind in RC.SPC_TYPES.items():
        nv = [c for c, k in RC.NVME_TYPES.items() if k == kind][0]
        st = held(nv)
        view = R.ResvView(st.view())
        lun = scsi_pr.LunPr()
        a, b = ("iqn.a", "t"), ("iqn.b", "t")
        lun.regs = {a: 1, b: 2}
        lun.rtype, lun.holder = spc_code, a
        store = scsi_pr.PrStore()
        store.luns[0] = lun
        for nvh, sh in ((A, a), (B, b), (C, ("iqn.c", "t"))):
            assert view.allows(nvh, False) == store.check_access(0, sh, bytes([0x28]) + bytes(9))
            assert view.allows(nvh, True) == store.check_access(0, sh, bytes([0x2A]) + bytes(9))


def test_decoders_round_trip() -> None:
    cdw10, data = R.encode_register(R.REG_REPLACE, 1, 2, iekey=True, cptpl=R.CPTPL_SET)
    assert R.decode_register(cdw10, data) == R.RegisterCmd(2, True, 3, 1, 2)
    cdw10, data = R.encode_acquire(R.ACQ_PREEMPT_ABORT, EAAR, 5, 6)
    assert R.decode_acquire(cdw10, data) == R.AcquireCmd(2, False, EAAR, 5, 6)
    cdw10, data = R.encode_release(R.REL_CLEAR, 0, 9)
    assert R.decode_release(cdw10, data) == R.ReleaseCmd(1, False, 0, 9)


def test_supervisor_op_rolls_back_when_the_ptpl_file_cannot_be_written(tmp_path, monkeypatch):
    """A change that cannot be made durable is not made (Internal Error)."""
    from blockfabric.control.context import SUPERVISOR_OPS
    from blockfabric.transports.nvmf import reservation_sup
    from blockfabric.transports.nvmf.state import NvmfState, new_subsystem

    st = NvmfState()
    nqn = "nqn.2016-06.io.blockfabric:rb"
    st.subsystems[nqn] = new_subsystem(nqn)
    ns = {"nsid": 1, "bdev_name": "M0", "ptpl_file": str(tmp_path / "p.ptpl")}
    st.subsystems[nqn]["namespaces"][1] = ns
    reservation_sup.namespace_added(st, nqn, 1, ns)
    sent: list[str] = []

    class Ctx:
        nvmf = st

        def gather(self, op, args, timeout=5.0):  # noqa: ANN001, ANN201
            sent.append(op)
            return []

    op = SUPERVISOR_OPS["nvmf.resv"]
    cdw10, data = R.encode_register(R.REG_REGISTER, 0, KA, cptpl=R.CPTPL_SET)
    args = {"nqn": nqn, "nsid": 1, "host": A, "cmd": "register", "cdw10": cdw10, "data": data}
    assert op(Ctx(), 0, args) == {"status": 0}
    assert sent == ["nvmf.resv_view"] and ns["resv"]["r"] == [A] and ns["resv"]["p"]
    assert json.loads((tmp_path / "p.ptpl").read_text())["registrants"][0]["host_id"] == A

    def boom(path, s):  # noqa: ANN001, ANN202
        raise OSError("disk full")

    monkeypatch.setattr(reservation_ptpl, "save", boom)
    cdw10, data = R.encode_acquire(R.ACQ_ACQUIRE, EA, KA)
    out = op(Ctx(), 0, {**args, "cmd": "acquire", "cdw10": cdw10, "data": data})
    assert out["status"] == spec.ST_INTERNAL
    assert st.resv[(nqn, 1)].rtype == 0  # rolled back, and not published
    assert sent == ["nvmf.resv_view"]
