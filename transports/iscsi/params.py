"""Operational key negotiation (RFC 7143 sections 6 and 13) with SPDK's target
values.

A `Negotiator` lives for one login (or one Text exchange). It answers the
initiator's keys with the RFC result functions (list: first acceptable value of
the initiator's list; AND/OR booleans; numerical min/max; declarations are not
answered), keeps the agreed values, and turns them into `SessionParams` /
`ConnParams` at the end of the login.
"""

from __future__ import annotations

from dataclasses import dataclass

# login stages (CSG/NSG)
STAGE_SECURITY = 0
STAGE_OPERATIONAL = 1
STAGE_FULL_FEATURE = 3


class NegotiationError(Exception):
    """Negotiation that must end the login: (status class, detail)."""

    def __init__(self, status_class: int, detail: int, message: str) -> None:
        super().__init__(message)
        self.status_class = status_class
        self.detail = detail


@dataclass(frozen=True)
class KeyDef:
    kind: str  # list | or | and | min | max | decl_num | decl | security
    lo: int = 0
    hi: int = 0
    default: str = ""
    leading_only: bool = False
    discovery_irrelevant: bool = False
    ffp: bool = False  # may be sent in full feature phase (Text)


_SESS = {"leading_only": True}
_NODISC = {"leading_only": True, "discovery_irrelevant": True}

KEYS: dict[str, KeyDef] = {
    "HeaderDigest": KeyDef("list", default="None"),
    "DataDigest": KeyDef("list", default="None"),
    "MaxConnections": KeyDef("min", 1, 65535, "1", **_NODISC),
    "InitialR2T": KeyDef("or", default="Yes", **_NODISC),
    "ImmediateData": KeyDef("and", default="Yes", **_NODISC),
    "MaxRecvDataSegmentLength": KeyDef("decl_num", 512, 16777215, "8192", ffp=True),
    "MaxBurstLength": KeyDef("min", 512, 16777215, "262144", **_NODISC),
    "FirstBurstLength": KeyDef("min", 512, 16777215, "65536", **_NODISC),
    "DefaultTime2Wait": KeyDef("max", 0, 3600, "2", **_SESS),
    "DefaultTime2Retain": KeyDef("min", 0, 3600, "20", **_SESS),
    "MaxOutstandingR2T": KeyDef("min", 1, 65535, "1", **_NODISC),
    "DataPDUInOrder": KeyDef("or", default="Yes", **_NODISC),
    "DataSequenceInOrder": KeyDef("or", default="Yes", **_NODISC),
    "ErrorRecoveryLevel": KeyDef("min", 0, 2, "0", **_SESS),
    "IFMarker": KeyDef("and", default="No"),
    "OFMarker": KeyDef("and", default="No"),
    "IFMarkInt": KeyDef("marker"),
    "OFMarkInt": KeyDef("marker"),
    "InitiatorName": KeyDef("decl", leading_only=True),
    "InitiatorAlias": KeyDef("decl", ffp=True),
    "TargetName": KeyDef("decl", leading_only=True),
    "TargetAlias": KeyDef("decl", ffp=True),
    "SessionType": KeyDef("decl", default="Normal", leading_only=True),
    "TargetPortalGroupTag": KeyDef("target_only"),
    "TargetAddress": KeyDef("target_only"),
    "AuthMethod": KeyDef("security"),
    "CHAP_A": KeyDef("security"),
    "CHAP_I": KeyDef("security"),
    "CHAP_C": KeyDef("security"),
    "CHAP_N": KeyDef("security"),
    "CHAP_R": KeyDef("security"),
    "SendTargets": KeyDef("sendtargets", ffp=True),
}

NUMERIC_KINDS = ("min", "max", "decl_num")
BOOL_KINDS = ("or", "and")
SPECIAL_VALUES = ("NotUnderstood", "Irrelevant", "Reject")


def target_values(
    *,
    header_digest: bool = False,
    data_digest: bool = False,
    max_connections: int = 2,
    initial_r2t: bool = True,
    immediate_data: bool = True,
    max_recv_data_segment_length: int = 65536,
    max_burst_length: int = 1048576,
    first_burst_length: int = 8192,
    default_time2wait: int = 2,
    default_time2retain: int = 20,
    max_outstanding_r2t: int = 1,
    error_recovery_level: int = 0,
) -> dict[str, str]:
    """The target's side of every negotiable key (SPDK's defaults). A True
    digest flag means the digest is *required* (offer only CRC32C)."""
    yn = ("No", "Yes")
    return {
        "HeaderDigest": "CRC32C" if header_digest else "CRC32C,None",
        "DataDigest": "CRC32C" if data_digest else "CRC32C,None",
        "MaxConnections": str(max_connections),
        "InitialR2T": yn[initial_r2t],
        "ImmediateData": yn[immediate_data],
        "MaxRecvDataSegmentLength": str(max_recv_data_segment_length),
        "MaxBurstLength": str(max_burst_length),
        "FirstBurstLength": str(first_burst_length),
        "DefaultTime2Wait": str(default_time2wait),
        "DefaultTime2Retain": str(default_time2retain),
        "MaxOutstandingR2T": str(max_outstanding_r2t),
        "DataPDUInOrder": "Yes",
        "DataSequenceInOrder": "Yes",
        "ErrorRecoveryLevel": str(error_recovery_level),
        "IFMarker": "No",
        "OFMarker": "No",
    }


@dataclass
class SessionParams:
    max_connections: int = 1
    initial_r2t: bool = True
    immediate_data: bool = True
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    default_time2wait: int = 2
    default_time2retain: int = 20
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0


@dataclass
class ConnParams:
    header_digest: bool = False
    data_digest: bool = False
    max_recv_dlen: int = 8192  # what we accept (our declaration)
    max_xmit_dlen: int = 8192  # what the initiator accepts (its declaration)


def _parse_num(v: str) -> int | None:
    try:
        if v.lower().startswith("0x"):
            return int(v, 16)
        if not v.isdigit():
            return None
        return int(v)
    except ValueError:
        return None


class Negotiator:
    """Answers one side of a login/text negotiation.

    ``ours`` is `target_values()`. ``discovery`` makes session keys Irrelevant;
    ``leading`` is False for a connection added to an existing session.
    """

    def __init__(self, ours: dict[str, str], discovery: bool = False, leading: bool = True) -> None:
        self.ours = ours
        self.discovery = discovery
        self.leading = leading
        self.values: dict[str, str] = {}  # agreed values
        self.declared: dict[str, str] = {}  # the initiator's declarations
        self._declared_mrdsl = False

    def respond(self, pairs: list[tuple[str, str]], stage: int) -> list[tuple[str, str]]:
        """Answer the initiator's operational keys. Security keys and the
        declarative identity keys are left to the login state machine (they
        are skipped here). Raises NegotiationError for fatal problems."""
        out: list[tuple[str, str]] = []
        for key, val in pairs:
            kd = KEYS.get(key)
            if kd is None:
                # unknown, including X- / X# extension keys
                if val not in SPECIAL_VALUES:
                    out.append((key, "NotUnderstood"))
                continue
            if kd.kind in ("security", "decl", "sendtargets"):
                if kd.kind == "security" and stage != STAGE_SECURITY:
                    raise NegotiationError(2, 0, f"{key} sent outside the security stage")
                if kd.kind == "decl" and stage == STAGE_FULL_FEATURE and not kd.ffp:
                    out.append((key, "Reject"))
                    continue
                if kd.kind == "decl":
                    self.declared[key] = val
                continue
            if kd.kind == "target_only":
                # only the target may send these
                raise NegotiationError(2, 0, f"{key} may not be sent by an initiator")
            if val in SPECIAL_VALUES:
                continue  # answer to a proposal we did not make: ignore
            if stage == STAGE_FULL_FEATURE and not kd.ffp:
                out.append((key, "Reject"))
                continue
            if (self.discovery and kd.discovery_irrelevant) or (
                kd.leading_only and not self.leading
            ):
                out.append((key, "Irrelevant"))
                continue
            ans = self._one(key, kd, val)
            if ans is not None:
                out.append((key, ans))
        self._finish(out)
        return out

    def _one(self, key: str, kd: KeyDef, val: str) -> str | None:
        ours = self.ours.get(key, kd.default)
        if kd.kind == "list":
            offered = [v.strip() for v in val.split(",")]
            mine = ours.split(",")
            for v in offered:
                if v in mine:
                    self.values[key] = v
                    return v
            # nothing acceptable (e.g. only None while a digest is required)
            return "Reject"
        if kd.kind in BOOL_KINDS:
            if val not in ("Yes", "No"):
                return "Reject"
            if kd.kind == "or":
                res = "Yes" if "Yes" in (val, ours) else "No"
            else:
                res = "Yes" if val == ours == "Yes" else "No"
            self.values[key] = res
            return res
        if kd.kind == "marker":
            return "Irrelevant"
        n = _parse_num(val)
        if n is None or not kd.lo <= n <= kd.hi:
            return "Reject"
        if kd.kind == "decl_num":
            # MaxRecvDataSegmentLength: the initiator declares what it receives;
            # we declare ours in reply (once)
            self.declared[key] = str(n)
            if self._declared_mrdsl:
                return None
            self._declared_mrdsl = True
            return ours
        mine_n = int(ours)
        agreed = str(min(n, mine_n) if kd.kind == "min" else max(n, mine_n))
        self.values[key] = agreed
        return agreed

    def _finish(self, out: list[tuple[str, str]]) -> None:
        # FirstBurstLength must not exceed MaxBurstLength
        fbl = self.values.get("FirstBurstLength")
        mbl = self.values.get("MaxBurstLength", KEYS["MaxBurstLength"].default)
        if fbl is not None and int(fbl) > int(mbl):
            self.values["FirstBurstLength"] = mbl
            for i, (k, _) in enumerate(out):
                if k == "FirstBurstLength":
                    out[i] = (k, mbl)

    def declare_mrdsl(self) -> list[tuple[str, str]]:
        """Our MaxRecvDataSegmentLength, if we have not declared it yet (sent
        when the operational stage ends even if the initiator did not ask)."""
        if self._declared_mrdsl:
            return []
        self._declared_mrdsl = True
        return [("MaxRecvDataSegmentLength", self.ours["MaxRecvDataSegmentLength"])]

    def _get(self, key: str) -> str:
        return self.values.get(key, KEYS[key].default)

    def session_params(self) -> SessionParams:
        g = self._get
        return SessionParams(
            max_connections=int(g("MaxConnections")),
            initial_r2t=g("InitialR2T") == "Yes",
            immediate_data=g("ImmediateData") == "Yes",
            max_burst_length=int(g("MaxBurstLength")),
            first_burst_length=min(int(g("FirstBurstLength")), int(g("MaxBurstLength"))),
            default_time2wait=int(g("DefaultTime2Wait")),
            default_time2retain=int(g("DefaultTime2Retain")),
            max_outstanding_r2t=int(g("MaxOutstandingR2T")),
            data_pdu_in_order=g("DataPDUInOrder") == "Yes",
            data_sequence_in_order=g("DataSequenceInOrder") == "Yes",
            error_recovery_level=int(g("ErrorRecoveryLevel")),
        )

    def conn_params(self) -> ConnParams:
        return ConnParams(
            header_digest=self._get("HeaderDigest") == "CRC32C",
            data_digest=self._get("DataDigest") == "CRC32C",
            max_recv_dlen=int(self.ours.get("MaxRecvDataSegmentLength", "8192"))
            if self._declared_mrdsl
            else 8192,
            max_xmit_dlen=int(self.declared.get("MaxRecvDataSegmentLength", "8192")),
        )

    def digest_required_missing(self) -> str | None:
        """A digest the target requires but the initiator never negotiated."""
        for key in ("HeaderDigest", "DataDigest"):
            if self.ours.get(key) == "CRC32C" and self.values.get(key) != "CRC32C":
                return key
        return None
