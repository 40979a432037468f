"""Headless Chromium driven over the Chrome DevTools Protocol (its websocket, with aiohttp's
client): enough to fill in and submit forms, follow links, read pages and cookies, and save
downloads, as a person does in the browser. No library beyond aiohttp: the protocol is JSON
messages (https://chromedevtools.github.io/devtools-protocol/)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.browser import HEADLESS_FLAGS
from tests.support.services import require_binary

FLAGS = (*HEADLESS_FLAGS, "--remote-debugging-port=0")


class CdpError(RuntimeError):
    pass


class Tab:
    """One page target, attached with a flat session over the browser's websocket."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session_id)

    async def _navigation(self, start: Any) -> None:
        """Runs ``start`` (a coroutine that starts a navigation) and waits for its load event."""
        loaded = self.browser.expect("Page.loadEventFired", self.session_id)
        await start
        await asyncio.wait_for(loaded, 60)

    async def goto(self, url: str) -> None:
        await self._navigation(self.send("Page.navigate", url=url))

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def type_into(self, selector: str, text: str) -> None:
        """Focuses the field and types ``text`` as keyboard input."""
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)

    async def fill(self, selector: str, text: str) -> None:
        """Empties the field (or selects nothing) and types ``text``; a ``<select>`` and a
        date-time picker (which takes no typed text) are set to that value."""
        element = f"document.querySelector({json.dumps(selector)})"
        await self.evaluate(f"{element}.value = ''")
        if text and await self.evaluate(f"{element}.tagName + ':' + {element}.type") in (
            "SELECT:select-one",
            "INPUT:datetime-local",
        ):
            await self.evaluate(f"{element}.value = {json.dumps(text)}")
        elif text:
            await self.type_into(selector, text)

    async def click(self, selector: str, navigates: bool = True) -> None:
        """A real mouse click at the element's centre."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box

        async def press() -> None:
            for kind in ("mousePressed", "mouseReleased"):
                await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

        if navigates:
            await self._navigation(press())
        else:
            await press()

    async def html(self) -> str:
        return str(await self.evaluate("document.documentElement.outerHTML"))

    async def text(self) -> str:
        return str(await self.evaluate("document.body.innerText"))

    async def url(self) -> str:
        return str(await self.evaluate("location.href"))

    async def screenshot(self, path: Path, width: int, height: int, mobile: bool = False) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))
        await self.send("Emulation.clearDeviceMetricsOverride")


class Browser:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiting: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(CdpError(str(data["error"])))
                    else:
                        fut.set_result(data.get("result", {}))
                continue
            self.events.append(data)
            for entry in list(self._waiting):
                method, session, fut = entry
                if data.get("method") == method and session in (None, data.get("sessionId")):
                    self._waiting.remove(entry)
                    if not fut.done():
                        fut.set_result(data.get("params", {}))

    def expect(self, method: str, session_id: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """A future of the next event ``method`` (registered before the action that causes it)."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((method, session_id, fut))
        return fut

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id is not None:
            msg["sessionId"] = session_id
        await self.ws.send_str(json.dumps(msg))
        return await asyncio.wait_for(fut, 60)

    async def new_tab(self) -> Tab:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        tab = Tab(self, attached["sessionId"])
        await tab.send("Page.enable")
        return tab

    async def cookies(self) -> list[dict[str, Any]]:
        return list((await self.send("Storage.getCookies"))["cookies"])

    async def allow_downloads(self, directory: Path) -> None:
        await self.send(
            "Browser.setDownloadBehavior",
            {"behavior": "allowAndName", "downloadPath": str(directory), "eventsEnabled": True},
        )

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Browser]:
    """Debian's chromium, headless, with a fresh profile; its DevTools port is the one it
    writes to ``DevToolsActivePort`` in the profile."""
    binary = require_binary("chromium")
    await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
    stderr = profile.parent / f"{profile.name}.stderr"
    log = stderr.open("w")
    proc = await asyncio.create_subprocess_exec(
        binary, *FLAGS, f"--user-data-dir={profile}", "about:blank", stdout=log, stderr=log
    )
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.exists() and len(active.read_text().splitlines()) >= 2):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise CdpError(f"chromium did not start: {stderr.read_text()}")
            await asyncio.sleep(0.1)  # (chromium writes the file once it listens)
        port, path = active.read_text().splitlines()[:2]
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0) as ws,
        ):
            browser = Browser(ws)
            try:
                yield browser
            finally:
                await browser.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()
