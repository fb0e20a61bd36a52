"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``
(fd 3: commands to the browser, fd 4: its answers, NUL-terminated JSON), for
tests that must wait in real time for a page to update itself."""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any


class CdpError(Exception):
    pass


class Browser:
    def __init__(self, exe: str, profile: Path, width: int = 1280, height: int = 900) -> None:
        to_r, to_w = os.pipe()  # we write commands, the browser reads fd 3
        from_r, from_w = os.pipe()  # the browser writes fd 4, we read
        args = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                "--remote-debugging-pipe", f"--user-data-dir={profile}",
                f"--window-size={width},{height}", "about:blank"]  # fmt: skip

        def fds() -> None:  # in the child: the pipe ends where the browser wants them
            a, b = os.dup(to_r), os.dup(from_w)  # (either may already be 3 or 4)
            os.dup2(a, 3)  # dup2 onto another number: inheritable
            os.dup2(b, 4)

        # close_fds=False: it would close 3 and 4 after preexec_fn; every other
        # descriptor of ours is close-on-exec anyway
        self.proc = subprocess.Popen(
            args, preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_r)
        os.close(from_w)
        self.w, self.r = to_w, from_r
        self.buf = b""
        self.ids = 0
        self.session: str | None = None

    def _send(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> int:
        self.ids += 1
        msg: dict[str, Any] = {"id": self.ids, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        return self.ids

    def _recv(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise CdpError("no answer from the browser")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise CdpError("the browser closed the pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return dict(json.loads(raw))

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 60.0,
        session: bool = True,
    ) -> dict[str, Any]:  # fmt: skip
        mid = self._send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._recv(max(0.1, deadline - time.monotonic()))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CdpError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def open(self, url: str) -> None:
        tid = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call(
            "Target.attachToTarget", {"targetId": tid, "flatten": True}, session=False
        )["sessionId"]
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})

    def eval(self, expr: str) -> Any:
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True})
        if "exceptionDetails" in r:
            raise CdpError(f"{expr}: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def wait_for(self, expr: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                v = self.eval(expr)
            except CdpError:
                v = None
            if v:
                return v
            if time.monotonic() > deadline:
                raise CdpError(f"timed out waiting for {expr}")
            time.sleep(0.2)

    def dom(self) -> str:
        return str(self.eval("document.documentElement.outerHTML"))

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", session=False, timeout=10)
        except (CdpError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.w, self.r):
            try:
                os.close(fd)
            except OSError:
                pass
