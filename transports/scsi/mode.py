"""MODE SENSE / MODE SELECT (SPC-4 6.11-6.14, 7.5) with pages 01h, 08h, 0Ah."""

from __future__ import annotations

import json

from .cdb import MODE_SELECT_10, MODE_SENSE_10, be
from .sense import (
    invalid_cdb,
    invalid_param,
    param_list_length,
)

PAGE_RW_RECOVERY = 0x01
PAGE_CACHING = 0x08
PAGE_CONTROL = 0x0A
PAGE_ALL = 0x3F

PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = 0, 1, 2, 3


def _default_pages() -> dict[int, bytearray]:
    rw = bytearray(12)
    rw[0], rw[1] = PAGE_RW_RECOVERY, 10
    rw[2] = 0x80  # AWRE
    cache = bytearray(20)
    cache[0], cache[1] = PAGE_CACHING, 18
    cache[2] = 0x04  # WCE
    ctl = bytearray(12)
    ctl[0], ctl[1] = PAGE_CONTROL, 10
    ctl[3] = 0x10  # queue algorithm modifier 1: unrestricted reordering
    ctl[8:10] = b"\xff\xff"  # busy timeout: unlimited
    return {PAGE_RW_RECOVERY: rw, PAGE_CACHING: cache, PAGE_CONTROL: ctl}


def _changeable() -> dict[int, bytes]:
    rw = bytearray(12)
    rw[0], rw[1] = PAGE_RW_RECOVERY, 10
    cache = bytearray(20)
    cache[0], cache[1] = PAGE_CACHING, 18
    cache[2] = 0x04  # WCE
    ctl = bytearray(12)
    ctl[0], ctl[1] = PAGE_CONTROL, 10
    ctl[4] = 0x08  # SWP
    return {PAGE_RW_RECOVERY: bytes(rw), PAGE_CACHING: bytes(cache), PAGE_CONTROL: bytes(ctl)}


_CHANGEABLE = _changeable()
_DEFAULTS = {k: bytes(v) for k, v in _default_pages().items()}


class ModePages:
    """Mode page values of one LUN, shared by every I_T nexus (SPC-4 allows
    one set per LU): current values (MODE SELECT changes them; WCE = 0 makes
    every write write-through) and saved values (MODE SELECT with SP = 1;
    they live as long as the LUN)."""

    def __init__(self, path: str | None = None) -> None:
        self.pages = _default_pages()
        self.saved = _default_pages()
        # where the saved values live across restarts (None: memory only);
        # at power-on the current values are the saved ones (SPC-4 6.13)
        self.path = path
        if path:
            self._load(path)

    def _load(self, path: str) -> None:
        try:
            with open(path) as f:
                data = json.load(f)
            for k, v in data.get("saved", {}).items():
                code = int(k)
                raw = bytes.fromhex(v)
                if code in self.saved and len(raw) == len(self.saved[code]):
                    mask = _CHANGEABLE[code]
                    page = bytearray(_DEFAULTS[code])
                    for i in range(2, len(page)):  # only changeable bits come back
                        page[i] = (page[i] & ~mask[i]) | (raw[i] & mask[i])
                    self.saved[code][:] = page
                    self.pages[code][:] = page
        except (OSError, ValueError, TypeError, AttributeError):
            pass  # no file yet, or a damaged one: defaults

    def _store(self) -> None:
        if not self.path:
            return
        from .pr import durable_replace

        data = {"saved": {str(k): bytes(v).hex() for k, v in self.saved.items()}}
        durable_replace(self.path, json.dumps(data).encode())

    @property
    def wce(self) -> bool:
        return bool(self.pages[PAGE_CACHING][2] & 0x04)

    @property
    def swp(self) -> bool:
        return bool(self.pages[PAGE_CONTROL][4] & 0x08)

    def _page(self, code: int, pc: int) -> bytes:
        if pc == PC_CHANGEABLE:
            return _CHANGEABLE[code]
        if pc == PC_DEFAULT:
            return _DEFAULTS[code]
        if pc == PC_SAVED:
            return bytes(self.saved[code])
        return bytes(self.pages[code])

    def sense(self, cdb: bytes, block_size: int, num_blocks: int, write_protected: bool) -> bytes:
        """Full MODE SENSE(6)/(10) data; the caller truncates to the allocation length."""
        ten = cdb[0] == MODE_SENSE_10
        dbd = cdb[1] & 0x08
        llbaa = ten and bool(cdb[1] & 0x10)
        pc = cdb[2] >> 6
        code = cdb[2] & 0x3F
        sub = cdb[3]
        if code == PAGE_ALL:
            if sub not in (0x00, 0xFF):
                raise invalid_cdb(3)
            pages = b"".join(self._page(c, pc) for c in sorted(self.pages))
        elif code in self.pages:
            if sub not in (0x00, 0xFF):
                raise invalid_cdb(3)
            pages = self._page(code, pc)
        else:
            raise invalid_cdb(2, 5)
        if dbd:
            bd = b""
        elif llbaa:
            bd = num_blocks.to_bytes(8, "big") + bytes(4) + block_size.to_bytes(4, "big")
        else:
            nb = min(num_blocks, 0xFFFFFFFF) if ten else min(num_blocks, 0xFFFFFF)
            bd = nb.to_bytes(4, "big") + block_size.to_bytes(4, "big")
        dsp = 0x10 | (0x80 if write_protected else 0)  # DPOFUA, WP
        if ten:
            total = 8 + len(bd) + len(pages)
            hdr = (
                (total - 2).to_bytes(2, "big")
                + bytes((0, dsp, 0x01 if llbaa and bd else 0, 0))
                + len(bd).to_bytes(2, "big")
            )
        else:
            total = 4 + len(bd) + len(pages)
            if total - 1 > 255:
                raise invalid_cdb(2, 5)
            hdr = bytes((total - 1, 0, dsp, len(bd)))
        return hdr + bd + pages

    def select(self, cdb: bytes, param: bytes | memoryview, block_size: int) -> bool:
        """Apply MODE SELECT(6)/(10); True when a current value changed."""
        ten = cdb[0] == MODE_SELECT_10
        save = bool(cdb[1] & 0x01)  # SP: also make the values the saved ones
        plen = be(cdb, 7, 2) if ten else cdb[4]
        if plen == 0:
            return False
        if len(param) < plen:
            raise param_list_length()
        p = bytes(param[:plen])
        hlen = 8 if ten else 4
        if plen < hlen:
            raise param_list_length()
        bdl = be(p, 6, 2) if ten else p[3]
        pos = hlen
        if bdl:
            if pos + bdl > plen:
                raise param_list_length()
            if bdl not in (8, 16):
                raise invalid_param(6 if ten else 3)
            bl = be(p, pos + bdl - 4, 4) & 0xFFFFFF if bdl == 8 else be(p, pos + 12, 4)
            if bl not in (0, block_size):
                raise invalid_param(pos + bdl - 3)
            pos += bdl
        staged: dict[int, bytes] = {}
        while pos < plen:
            if pos + 2 > plen:
                raise param_list_length()
            code = p[pos] & 0x3F
            if p[pos] & 0x40:
                raise invalid_param(pos, 6)  # no subpages implemented
            if code not in self.pages:
                raise invalid_param(pos, 5)
            cur = self.pages[code]
            length = p[pos + 1]
            if length != len(cur) - 2:
                raise invalid_param(pos + 1)
            if pos + 2 + length > plen:
                raise param_list_length()
            new = p[pos : pos + 2 + length]
            mask = _CHANGEABLE[code]
            for i in range(2, len(cur)):
                if (new[i] ^ cur[i]) & ~mask[i] & 0xFF:
                    raise invalid_param(pos + i)
            staged[code] = new
            pos += 2 + length
        changed = False
        for code, new in staged.items():
            page = self.pages[code]
            if page[2:] != new[2:]:
                page[2:] = new[2:]
                changed = True
            if save:
                self.saved[code][2:] = new[2:]
        if save and staged:
            self._store()
        return changed
