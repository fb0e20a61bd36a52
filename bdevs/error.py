"""Error-injection bdev (SPDK's ``bdev_error``): ``EE_BASE`` in front of BASE.

``bdev_error_inject_error EE_BASE IO_TYPE ERROR_TYPE -n NUM`` arms NUM
injections for one I/O type (``read``, ``write``, ``unmap``, ``flush`` or
``all``; ``clear`` disarms): the next NUM such I/O, from whichever reactor,
get the error instead of (``failure``: IoStatus.FAILED, the host sees a
media/internal error; ``nomem``: IoStatus.NOMEM, retried by the transport as
a busy condition) or on top of the base's answer (``corrupt_data``: byte
``corrupt_offset`` of the data is XORed with ``corrupt_value`` — a write
writes the corrupted copy, a read returns a corrupted copy; the medium of a
zero-copy base is never touched; an I/O shorter than the offset passes
unchanged and still counts). Compare counts as a read, write zeroes and
compare-and-write as writes. The armed counters are one shared segment: NUM
is a total over all reactors, not per reactor. SPDK's ``pending`` (an I/O
never completed) is refused: it would hold a host buffer forever.
"""

from __future__ import annotations

from typing import Any

from .base import Bdev, Callback, CompareCallback, IoChannel, IoStatus, ReadCallback
from .stacked import ForwardChannel, SharedState, StackedBdev, safe_tag

IO_TYPES = ("read", "write", "unmap", "flush")
ERROR_TYPES = {"failure": 1, "corrupt_data": 2, "nomem": 3}
MAGIC = 0x4272457272496E6A  # "BrErrInj"
MAX_NUM = 1 << 31
# words: [0] magic [1] armed (any counter > 0); per io type t at 8 + 8 t:
# mode, remaining, corrupt_offset, corrupt_value, injected
W_MODE, W_LEFT, W_OFF, W_VAL, W_DONE = range(5)


def _slot(t: int) -> int:
    return 8 + 8 * t


class ErrorChannel(ForwardChannel):
    bdev: ErrorBdev

    def __init__(self, bdev: ErrorBdev, base: IoChannel) -> None:
        super().__init__(bdev, base)
        self.st = bdev.state()
        self.q = self.st.q

    def _take(self, t: int) -> tuple[int, int, int]:
        """(mode, corrupt_offset, corrupt_value) of an injection consumed now, or (0, 0, 0)."""
        q = self.q
        if not q[1]:  # the fast path: nothing armed, no lock
            return 0, 0, 0
        s = _slot(t)
        with self.st:
            if not q[s + W_LEFT]:
                return 0, 0, 0
            q[s + W_LEFT] -= 1
            q[s + W_DONE] += 1
            q[1] = int(any(q[_slot(i) + W_LEFT] for i in range(len(IO_TYPES))))
            return q[s + W_MODE], q[s + W_OFF], q[s + W_VAL]

    @staticmethod
    def _status(mode: int) -> IoStatus:
        return IoStatus.NOMEM if mode == ERROR_TYPES["nomem"] else IoStatus.FAILED

    def _do_read(
        self, offset_blocks: int, num_blocks: int, cb: ReadCallback, into: memoryview | None = None
    ) -> None:
        mode, off, val = self._take(0)
        if mode and mode != ERROR_TYPES["corrupt_data"]:
            cb(self._status(mode), None)
            return
        if not mode:
            self.base.read(offset_blocks, num_blocks, cb, into)
            return

        def corrupt(st: IoStatus, data: memoryview | None) -> None:
            if st or data is None or off >= len(data):
                cb(st, data)
                return
            out = into if into is not None else memoryview(bytearray(len(data)))
            if out is not data:
                out[: len(data)] = data  # never corrupt the medium of a zero-copy base
            out[off] ^= val & 0xFF
            cb(st, out[: len(data)])

        self.base.read(offset_blocks, num_blocks, corrupt, into)

    def _do_compare(self, offset_blocks: int, data: memoryview, cb: CompareCallback) -> None:
        mode, _, _ = self._take(0)
        if mode:
            cb(
                self._status(mode) if mode != ERROR_TYPES["corrupt_data"] else IoStatus.MISCOMPARE,
                0,
            )
            return
        self.base.compare(offset_blocks, data, cb)

    def _corrupted(self, data: memoryview, off: int, val: int) -> memoryview:
        if off >= len(data):
            return data
        buf = bytearray(data)  # the host's buffer stays as sent
        buf[off] ^= val & 0xFF
        return memoryview(buf)

    def _do_write(
        self, offset_blocks: int, data: memoryview, cb: Callback, fua: bool = False
    ) -> None:
        mode, off, val = self._take(1)
        if mode == ERROR_TYPES["corrupt_data"]:
            data = self._corrupted(data, off, val)
        elif mode:
            cb(self._status(mode))
            return
        self.base.write(offset_blocks, data, cb, fua)

    def _do_compare_and_write(
        self,
        offset_blocks: int,
        compare: memoryview,
        write: memoryview,
        cb: CompareCallback,
        fua: bool,
    ) -> None:
        mode, off, val = self._take(1)
        if mode == ERROR_TYPES["corrupt_data"]:
            write = self._corrupted(write, off, val)
        elif mode:
            cb(self._status(mode), -1)
            return
        self.base.compare_and_write(offset_blocks, compare, write, cb, fua)

    def _do_write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        mode, _, _ = self._take(1)
        if mode and mode != ERROR_TYPES["corrupt_data"]:
            cb(self._status(mode))
            return
        self.base.write_zeroes(offset_blocks, num_blocks, cb)

    def _do_unmap(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        mode, _, _ = self._take(2)
        if mode and mode != ERROR_TYPES["corrupt_data"]:
            cb(self._status(mode))
            return
        self.base.unmap(offset_blocks, num_blocks, cb)

    def _do_flush(self, cb: Callback) -> None:
        mode, _, _ = self._take(3)
        if mode and mode != ERROR_TYPES["corrupt_data"]:
            cb(self._status(mode))
            return
        self.base.flush(cb)

    def close(self) -> None:
        super().close()
        # the shared state stays mapped by the bdev object (one map per process)


class ErrorBdev(StackedBdev):
    MODULE = "error"
    PRODUCT = "Error Injection Disk"
    segment_name: str = ""
    _state: SharedState | None = None

    def _description(self) -> dict[str, Any]:
        return {**super()._description(), "segment": self.segment_name}

    def _restore(self, d: dict[str, Any]) -> None:
        super()._restore(d)
        self.segment_name = d["segment"]

    @classmethod
    def create(cls, instance: str, base: Bdev, uuid: str | None = None) -> ErrorBdev:
        name = "EE_" + base.name
        kw: dict[str, Any] = {"uuid": uuid} if uuid else {}
        b = cls(
            name=name,
            block_size=base.block_size,
            num_blocks=base.num_blocks,
            product_name=cls.PRODUCT,
            **kw,
        )
        b.base_descs = [base.describe()]
        b.supports_unmap = base.supports_unmap
        b.supports_write_zeroes = base.supports_write_zeroes
        b.supports_flush = base.supports_flush
        st = SharedState.create(instance, safe_tag("error", name), 8 + 8 * len(IO_TYPES))
        st.q[0] = MAGIC
        b._state = st
        b.segment_name = st.seg.name
        b.create_method = "bdev_error_create"
        b.create_params = {"base_name": base.name, "uuid": b.uuid}
        return b

    def state(self) -> SharedState:
        if self._state is None:
            self._state = SharedState.attach(self.segment_name)
        return self._state

    def inject(
        self,
        io_type: str,
        error_type: str,
        num: int,
        corrupt_offset: int = 0,
        corrupt_value: int = 0,
    ) -> None:
        """Arm (or with io_type 'clear' disarm) injections; replaces what was armed."""
        st = self.state()
        q = st.q
        types = range(len(IO_TYPES)) if io_type in ("all", "clear") else [IO_TYPES.index(io_type)]
        with st:
            for t in types:
                s = _slot(t)
                if io_type == "clear":
                    q[s + W_MODE] = q[s + W_LEFT] = 0
                    continue
                q[s + W_MODE] = ERROR_TYPES[error_type]
                q[s + W_LEFT] = num
                q[s + W_OFF] = corrupt_offset
                q[s + W_VAL] = corrupt_value
            q[1] = int(any(q[_slot(i) + W_LEFT] for i in range(len(IO_TYPES))))

    def counters(self) -> dict[str, dict[str, Any]]:
        q = self.state().q
        names = {v: k for k, v in ERROR_TYPES.items()}
        out = {}
        for t, io in enumerate(IO_TYPES):
            s = _slot(t)
            out[io] = {
                "error_type": names.get(q[s + W_MODE], "none"),
                "remaining": q[s + W_LEFT],
                "injected": q[s + W_DONE],
            }
        return out

    def open_channel(self, loop: Any = None) -> IoChannel:
        return ErrorChannel(self, self.base_bdev(0).open_channel(loop))

    def destroy(self) -> None:
        st = self.state()
        self._state = None
        st.destroy()

    def driver_specific(self) -> dict[str, Any]:
        d: dict[str, Any] = {"base_bdev_name": self.base_names()[0]}
        try:
            d["injections"] = self.counters()
        except (OSError, ValueError):
            pass
        return {"error": d}
