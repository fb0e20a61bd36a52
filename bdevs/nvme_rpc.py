"""bdev_nvme RPC methods (SPDK names and parameters) and the supervisor-side
remote controller: admin queue, keep-alive, loss detection and reconnect."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from dataclasses import replace
from typing import Any

from ..control.errors import EEXIST, ENODEV, RpcError, invalid_params
from ..control.registry import OUT_ARRAY, OUT_DICT, Param, rpc_method
from .nvme import NvmeBdev

log = logging.getLogger(__name__)

KATO_MS = 10000
HEALTH_PERIOD = 1.0  # keep-alive / health check interval on the supervisor
CTRLRS: dict[str, NvmeCtrlr] = {}  # name -> controller (supervisor process only)


def _tls_desc(e: Any) -> dict[str, Any]:
    return {"tls_identity": e.identity, "tls_suite": e.suite, "tls_key": e.key}


class NvmeCtrlr:
    def __init__(self, ctx: Any, name: str, p: dict[str, Any]) -> None:
        self.ctx = ctx
        self.name = name
        self.p = p
        self.ctrl: Any = None
        self.state = "connecting"
        self.bdev_names: list[str] = []
        self.gen = 0
        self.lost_at = 0.0
        self._timer: Any = None
        self._fd = -1
        self.last_error = ""
        self.max_xfer = 0
        # DH-HMAC-CHAP (transports/nvmf_host/auth.py): the secrets, resolved
        # from the keyring by name at attach time; p keeps only the names
        self.dhchap: Any = None

    # ------------------------------------------------------------ connect
    def connect(self) -> None:
        from ..transports.nvmf_host.controller import Controller

        p = self.p
        c = Controller(
            p["traddr"],
            p["trsvcid"],
            p["subnqn"],
            hostnqn=p.get("hostnqn"),
            hostid=bytes.fromhex(p["hostid"]) if p.get("hostid") else None,
            kato_ms=KATO_MS,
            hdgst=p["hdgst"],
            ddgst=p["ddgst"],
            nr_io_queues=0,
            timeout=5.0,
            keepalive_thread=False,
            trtype=p.get("trtype", "TCP"),
            host_traddr=p.get("hostaddr") if p.get("trtype") == "FC" else None,
            psk=self._psk(),
            dhchap=self.dhchap,
        )
        c.connect()
        if p.get("trtype") == "FC":
            p["hostaddr"] = c.host_traddr  # the I/O queues join this host port's association
        # MDTS is in units of the minimum memory page size (CAP.MPSMIN, 4 KiB
        # on every fabrics target we know); 0 means no limit
        mdts = c.identify_controller().mdts
        self.max_xfer = (4096 << mdts) if mdts else 0
        if p.get("trtype") == "RDMA":  # an I/O in unregistered memory goes through
            from ..transports.nvmf_host.rdma import DEFAULT_STAGE  # a staging buffer per CID

            self.max_xfer = min(self.max_xfer or DEFAULT_STAGE, DEFAULT_STAGE)
        p["hostid"] = c.hostid.hex()
        p["hostnqn"] = c.hostnqn
        self.ctrl = c
        self.state = "enabled"
        self.gen += 1
        loop = getattr(self.ctx, "loop", None)
        if loop is not None and c.admin is not None:
            from ..runtime.loop import EPOLLIN

            self._fd = c.admin.sock.fileno()
            loop.add_fd(self._fd, EPOLLIN, lambda _e: self._on_readable())

    def _psk(self) -> Any:
        """The configured TLS PSK named by --psk (read from the keyring at
        each connect, so a reconnect uses the key as loaded now)."""
        name = self.p.get("psk")
        if not name:
            return None
        from ..control.keyring import keyring_of

        return keyring_of(self.ctx).tls_psk(name)

    def namespaces(self) -> list[tuple[int, Any]]:
        return [
            (nsid, self.ctrl.identify_namespace(nsid)) for nsid in self.ctrl.active_namespaces()
        ]

    def ctrlr_desc(self, ns_index: int) -> dict[str, Any]:
        c = self.ctrl
        p = self.p
        cores = [r.core for r in getattr(self.ctx, "reactors", [])] or list(
            range(self.ctx.num_reactors)
        )
        return {
            "trtype": p.get("trtype", "TCP"),
            "host_traddr": p.get("hostaddr"),
            "assoc_id": getattr(c, "assoc_id", 0) if c else 0,
            "traddr": p["traddr"],
            "trsvcid": str(p["trsvcid"]),
            "adrfam": p.get("adrfam") or "IPv4",
            "subnqn": p["subnqn"],
            "hostnqn": p["hostnqn"],
            "hostid": p["hostid"],
            "cntlid": c.cntlid if c else 0,
            "hdgst": p["hdgst"],
            "ddgst": p["ddgst"],
            "icd_max": c.icd_max if c else 0,
            "qsize": min(128, c.mqes) if c else 128,
            "state": self.state,
            "gen": self.gen,
            "cores": cores,
            "ns_index": ns_index,
            "reconnect_delay_sec": p.get("reconnect_delay_sec") or 1,
            "ctrlr_loss_timeout_sec": p.get("ctrlr_loss_timeout_sec") or 0,
            "fast_io_fail_timeout_sec": p.get("fast_io_fail_timeout_sec") or 0,
            "max_xfer": self.max_xfer,
            # the reactors' I/O queues do TLS with the same derived PSK (the
            # configured key never leaves the supervisor)
            **(_tls_desc(c.tls) if c is not None and getattr(c, "tls", None) else {}),
            # reactors authenticate their I/O queues with these (never shown:
            # driver_specific and save_config pick their fields by name)
            "dhchap": (
                [
                    self.dhchap.key.interchange(),
                    self.dhchap.ctrl_key.interchange() if self.dhchap.ctrl_key else None,
                ]
                if self.dhchap is not None
                else None
            ),
        }

    def publish(self) -> None:
        """Push the connection state into every namespace bdev's description."""
        for i, n in enumerate(self.bdev_names):
            b = self.ctx.bdevs.get(n)
            if b is not None:
                b.ctrlr.update(self.ctrlr_desc(i))
        self.ctx.config_changed()

    # ------------------------------------------------------------ health
    def start_health(self) -> None:
        loop = getattr(self.ctx, "loop", None)
        if loop is not None:
            self._timer = loop.call_later(HEALTH_PERIOD, self._health)

    def _on_readable(self) -> None:
        """The admin socket is readable while no command is running: the
        controller closed the connection (or sent something unasked)."""
        if self.ctrl is None or self.ctrl.admin is None:
            return
        peek = getattr(self.ctrl.admin, "peek", None)
        if peek is not None:  # RDMA: its RDMA CM event channel is readable
            why = peek()
            if why:
                self._lost(f"admin connection lost: {why}")
            return
        try:
            data = self.ctrl.admin.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as e:
            self._lost(f"admin connection error: {e}")
            return
        if not data:
            self._lost("admin connection closed by the controller")
        else:
            try:  # an unsolicited PDU (e.g. a TermReq): let the queue parse it
                self.ctrl.keep_alive()
            except Exception as e:  # noqa: BLE001
                self._lost(f"admin queue failed: {e}")

    def _health(self) -> None:
        self._timer = None
        if self.state == "deleting":
            return
        if self.state == "enabled":
            try:
                self.ctrl.keep_alive()
            except Exception as e:  # noqa: BLE001 - any failure means the link is gone
                self._lost(f"keep-alive failed: {e}")
        elif self.state == "failed":
            self._try_reconnect()
        if self.state in ("enabled", "failed"):
            loop = self.ctx.loop
            delay = (
                HEALTH_PERIOD
                if self.state == "enabled"
                else max(0.1, float(self.p.get("reconnect_delay_sec") or 1))
            )
            self._timer = loop.call_later(delay, self._health)

    def _drop_ctrl(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(Exception):
                self.ctx.loop.remove_fd(self._fd)
            self._fd = -1
        if self.ctrl is not None:
            with contextlib.suppress(Exception):
                self.ctrl.close(shutdown=False)
            self.ctrl = None

    def _lost(self, why: str) -> None:
        if self.state != "enabled":
            return
        log.warning("nvme controller %s lost: %s", self.name, why)
        self.last_error = why
        self.state = "failed"
        self.lost_at = time.monotonic()
        cntlid = self.ctrl.cntlid if self.ctrl else 0
        self._drop_ctrl()
        self.gen += 1
        for i, n in enumerate(self.bdev_names):
            b = self.ctx.bdevs.get(n)
            if b is not None:
                b.ctrlr.update(self.ctrlr_desc(i))
                b.ctrlr["cntlid"] = cntlid
        self.ctx.config_changed()
        if self._timer is None:
            self._timer = self.ctx.loop.call_later(
                max(0.1, float(self.p.get("reconnect_delay_sec") or 1)), self._health
            )

    def _try_reconnect(self) -> None:
        loss = self.p.get("ctrlr_loss_timeout_sec")
        loss = 0 if loss is None else loss
        if loss != -1 and time.monotonic() - self.lost_at >= loss:
            log.warning(
                "nvme controller %s: ctrlr_loss_timeout_sec %s reached, removing its bdevs",
                self.name,
                loss,
            )
            self.state = "deleting"
            self.destroy()
            CTRLRS.pop(self.name, None)
            return
        try:
            self.connect()
        except Exception as e:  # noqa: BLE001
            self.last_error = str(e)
            log.info("nvme controller %s: reconnect failed: %s", self.name, e)
            self.state = "failed"
            return
        log.info("nvme controller %s reconnected (cntlid %d)", self.name, self.ctrl.cntlid)
        self.publish()

    def destroy(self) -> None:
        self.state = "deleting"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for n in self.bdev_names:
            if n in self.ctx.bdevs:
                with contextlib.suppress(RpcError):
                    self.ctx.remove_bdev(n)
        self.bdev_names = []
        self._drop_ctrl()

    def get_entry(self) -> dict[str, Any]:
        p = self.p
        return {
            "name": self.name,
            "ctrlrs": [
                {
                    "state": self.state,
                    "cntlid": self.ctrl.cntlid if self.ctrl else 0,
                    "trid": {
                        "trtype": p.get("trtype", "TCP"),
                        "adrfam": p.get("adrfam") or "IPv4",
                        "traddr": p["traddr"],
                        "trsvcid": str(p["trsvcid"]),
                        "subnqn": p["subnqn"],
                    },
                    "host": {
                        "nqn": p.get("hostnqn", ""),
                        "addr": p.get("hostaddr") or "",
                        "svcid": p.get("hostsvcid") or "",
                    },
                }
            ],
        }


# the transport ID of a controller (attach; detach selects a path by it)
_TRTYPE = Param("trtype", str, short="-t", help="NVMe-oF target trtype: e.g., tcp, rdma, pcie")
_TRADDR = Param("traddr", str, short="-a", help="NVMe-oF target address: e.g., an ip address")
_ADRFAM = Param("adrfam", str, required=False, short="-f", help="NVMe-oF target adrfam: ipv4, ipv6")
_TRSVCID = Param("trsvcid", str, required=False, short="-s", help="NVMe-oF target trsvcid (port)")
_SUBNQN = Param("subnqn", str, required=False, short="-n", help="NVMe-oF target subnqn")
_HOSTADDR = Param("hostaddr", str, required=False, short="-i", help="NVMe-oF host address")
_HOSTSVCID = Param("hostsvcid", str, required=False, short="-c", help="NVMe-oF host svcid")


@rpc_method(
    "bdev_nvme_attach_controller",
    Param("name", str, short="-b", help="Name of the NVMe controller, prefix for each bdev name"),
    _TRTYPE,
    _TRADDR,
    _ADRFAM,
    _TRSVCID,
    _SUBNQN,
    Param("hostnqn", str, required=False, short="-q", help="NVMe-oF host subnqn"),
    _HOSTADDR,
    _HOSTSVCID,
    Param("priority", str, required=False, short="-p", help="NVMe-oF connection priority"),
    Param(
        "prchk_reftag", bool, required=False, short="-r", help="Enable checking of PI reference tag"
    ),
    Param("prchk_guard", bool, required=False, short="-g", help="Enable checking of PI guard"),
    Param("hdgst", bool, required=False, short="-e", help="Enable TCP header digest"),
    Param("ddgst", bool, required=False, short="-d", help="Enable TCP data digest"),
    Param(
        "ctrlr_loss_timeout_sec",
        int,
        required=False,
        min=-1,
        short="-l",
        help="Time to wait until ctrlr is reconnected before deleting it",
    ),
    Param(
        "reconnect_delay_sec",
        int,
        required=False,
        min=0,
        short="-o",
        help="Time to delay a reconnect retry",
    ),
    Param(
        "fast_io_fail_timeout_sec",
        int,
        required=False,
        min=0,
        short="-u",
        help="Time to wait before failing I/O to a lost ctrlr",
    ),
    Param(
        "multipath",
        str,
        required=False,
        short="-x",
        help="Set multipath behavior (disable, failover, multipath)",
    ),
    Param("num_io_queues", int, required=False, min=1, help="Number of IO queues to request"),
    Param(
        "psk",
        str,
        required=False,
        short="-k",
        help="Name of the TLS PSK (keyring_file_add_key) for NVMe/TCP over TLS 1.3",
    ),
    Param("dhchap_key", str, required=False, help="DH-HMAC-CHAP key name (keyring)"),
    Param(
        "dhchap_ctrlr_key",
        str,
        required=False,
        help="DH-HMAC-CHAP controller key name (the host authenticates the controller too)",
    ),
    aliases=("construct_nvme_bdev",),
    ignored=(
        Param(
            "fabrics_connect_timeout_us",
            int,
            required=False,
            long="--fabrics-timeout",
            help="Fabrics connect timeout in microseconds (accepted; the connect timeout is fixed)",
        ),
    ),
    cli_out=OUT_ARRAY,
)
def bdev_nvme_attach_controller(
    ctx: Any,
    name: str,
    trtype: str,
    traddr: str,
    adrfam: str | None = None,
    trsvcid: str | None = None,
    subnqn: str | None = None,
    hostnqn: str | None = None,
    hdgst: bool | None = None,
    ddgst: bool | None = None,
    ctrlr_loss_timeout_sec: int | None = None,
    reconnect_delay_sec: int | None = None,
    fast_io_fail_timeout_sec: int | None = None,
    hostaddr: str | None = None,
    hostsvcid: str | None = None,
    psk: str | None = None,
    dhchap_key: str | None = None,
    dhchap_ctrlr_key: str | None = None,
    **_: Any,
) -> list[str]:
    from ..transports.nvmf.auth_host import AuthFailed
    from ..transports.nvmf_host.auth import HostAuthConfig
    from ..transports.nvmf_host.queue import NvmeStatusError, TransportError

    if trtype.upper() == "FC":  # over the loopback FC LLD (transports/fc)
        from ..transports.fc.addr import FcAddrError, parse_traddr

        try:
            traddr = parse_traddr(traddr).traddr
            if hostaddr:
                hostaddr = parse_traddr(hostaddr).traddr
        except FcAddrError as e:
            raise invalid_params(f"parameter 'traddr'/'hostaddr': {e}") from None
        if adrfam is not None and adrfam.lower() != "fc":
            raise invalid_params(f"parameter 'adrfam' must be FC with trtype FC, got {adrfam!r}")
        if trsvcid not in (None, "", "none"):
            raise invalid_params(f"parameter 'trsvcid': FC has none, got {trsvcid!r}")
        adrfam, port = "FC", "none"
    else:
        if trtype.upper() == "RDMA":
            from ..transports.nvmf_host.rdma_verbs import pyverbs_refusal

            why = pyverbs_refusal()
            if why is not None:
                raise invalid_params(f"parameter 'trtype' RDMA: {why}")
            if hdgst or ddgst:
                raise invalid_params(
                    "parameters 'hdgst'/'ddgst' are NVMe/TCP digests: not with RDMA"
                )
        elif trtype.upper() != "TCP":
            raise invalid_params(f"parameter 'trtype' {trtype!r} is not supported (TCP, RDMA, FC)")
        if adrfam is not None and adrfam.lower() not in ("ipv4", "ipv6"):
            raise invalid_params(f"parameter 'adrfam' must be IPv4 or IPv6, got {adrfam!r}")
        port = trsvcid or "4420"
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise invalid_params(f"parameter 'trsvcid' {port!r} is not a TCP port")
    if not name or any(c.isspace() for c in name):
        raise invalid_params(f"parameter 'name' {name!r} is not a valid controller name")
    if name in CTRLRS:
        raise RpcError(EEXIST, f"nvme controller {name} already exists")
    loss = ctrlr_loss_timeout_sec if ctrlr_loss_timeout_sec is not None else 0
    delay = reconnect_delay_sec if reconnect_delay_sec is not None else 0
    if loss and not delay:
        raise invalid_params(
            "parameter 'reconnect_delay_sec' must be non-zero when ctrlr_loss_timeout_sec is set"
        )
    if loss > 0 and delay > loss:
        raise invalid_params(
            "parameter 'reconnect_delay_sec' must not exceed ctrlr_loss_timeout_sec"
        )
    p = {
        "trtype": trtype.upper(),
        "traddr": traddr,
        "adrfam": adrfam or "IPv4",
        "trsvcid": port,
        "subnqn": subnqn or "nqn.2014-08.org.nvmexpress.discovery",
        "hostnqn": hostnqn,
        "hdgst": bool(hdgst),
        "ddgst": bool(ddgst),
        "ctrlr_loss_timeout_sec": loss,
        "reconnect_delay_sec": delay,
        "fast_io_fail_timeout_sec": fast_io_fail_timeout_sec,
        "hostaddr": hostaddr,
        "hostsvcid": hostsvcid,
        "psk": psk,  # the key's name: save_config never holds the material
    }
    if psk is not None and p["trtype"] != "TCP":
        raise invalid_params("parameter 'psk': TLS is for the TCP transport only")
    dhchap = None
    if dhchap_ctrlr_key is not None and dhchap_key is None:
        raise invalid_params("parameter 'dhchap_ctrlr_key' needs 'dhchap_key'")
    if dhchap_key is not None:
        from ..control.keyring import keyring_of

        kr = keyring_of(ctx)
        dhchap = HostAuthConfig(
            kr.dhchap_secret(dhchap_key),
            kr.dhchap_secret(dhchap_ctrlr_key) if dhchap_ctrlr_key else None,
        )
        p["dhchap_key"] = dhchap_key
        p["dhchap_ctrlr_key"] = dhchap_ctrlr_key
    nc = NvmeCtrlr(ctx, name, p)
    nc.dhchap = dhchap
    if psk is not None:
        from ..control.keyring import keyring_of

        keyring_of(ctx).tls_psk(psk)  # -ENOKEY / -EINVAL before any connection
    try:
        nc.connect()
        nss = nc.namespaces()
    except AuthFailed as e:
        nc._drop_ctrl()
        raise RpcError(
            -13, f"controller {traddr}:{port} {p['subnqn']}: DH-HMAC-CHAP: {e}"
        ) from None
    except (OSError, TransportError, TimeoutError) as e:
        nc._drop_ctrl()
        raise RpcError(-5, f"cannot connect to {traddr}:{port} {p['subnqn']}: {e}") from None
    except NvmeStatusError as e:
        nc._drop_ctrl()
        raise RpcError(-5, f"controller {traddr}:{port} {p['subnqn']} refused: {e}") from None
    names = [f"{name}n{nsid}" for nsid, _ in nss]
    for n in names:
        if n in ctx.bdevs:
            nc._drop_ctrl()
            raise RpcError(EEXIST, f"bdev {n} already exists")
    CTRLRS[name] = nc
    if psk is not None:
        from ..control.keyring import keyring_of

        keyring_of(ctx).acquire(psk, f"nvme controller {name}")
    for i, (nsid, ns) in enumerate(nss):
        kw: dict[str, Any] = {}
        if any(ns.nguid):
            import uuid as uuid_mod

            kw["uuid"] = str(uuid_mod.UUID(bytes=ns.nguid))
        b = NvmeBdev(
            name=names[i],
            block_size=ns.block_size,
            num_blocks=ns.nsze,
            ctrlr=nc.ctrlr_desc(i),
            nsid=nsid,
            **kw,
        )
        b.create_method = ""  # saved once per controller (below), not per namespace
        nc.bdev_names.append(b.name)
        ctx.add_bdev(b)
    nc.start_health()
    return names


@rpc_method(
    "bdev_nvme_detach_controller",
    Param("name", str, pos=0, help="Name of the controller"),
    replace(_TRTYPE, required=False),
    replace(_TRADDR, required=False),
    _ADRFAM,
    _TRSVCID,
    _SUBNQN,
    _HOSTADDR,
    _HOSTSVCID,
    aliases=("delete_nvme_controller",),
)
def bdev_nvme_detach_controller(ctx: Any, name: str, **_: Any) -> bool:
    nc = CTRLRS.pop(name, None)
    if nc is None:
        raise RpcError(ENODEV, f"nvme controller {name} not found")
    nc.destroy()
    if nc.p.get("psk"):
        from ..control.keyring import keyring_of

        keyring_of(ctx).release(nc.p["psk"], f"nvme controller {name}")
    return True


@rpc_method(
    "bdev_nvme_get_controllers",
    Param(
        "name", str, required=False, short="-n", help="Name of the NVMe controller. Example: Nvme0"
    ),
    aliases=("get_nvme_controllers",),
    cli_out=OUT_DICT,
)
def bdev_nvme_get_controllers(ctx: Any, name: str | None = None) -> list[dict[str, Any]]:
    if name is not None:
        nc = CTRLRS.get(name)
        if nc is None:
            raise RpcError(ENODEV, f"nvme controller {name} not found")
        return [nc.get_entry()]
    return [nc.get_entry() for nc in CTRLRS.values()]


def save_config() -> list[dict[str, Any]]:
    """attach_controller calls recreating every controller (for the lead's save_config)."""
    out = []
    for name, nc in CTRLRS.items():
        p = {k: v for k, v in nc.p.items() if v is not None and k != "hostid"}
        out.append({"method": "bdev_nvme_attach_controller", "params": {"name": name, **p}})
    return out
