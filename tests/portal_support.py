"""The portal's browser tests: Playwright for Python driving Debian's Chromium (no browser download), and a
page that watches itself: every console error, uncaught script error, failed request and failed
sub-resource fails the test at the end (`Portal.assert_clean`, called by the `portal_page` fixture).

Controls are found by their visible Chinese <label>, the way a clerk finds them."""

from __future__ import annotations

import os
import re
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from playwright.async_api import Browser, BrowserContext, Page, Response, async_playwright

from support import run_cli, run_cli_full_async

CHROMIUM = os.environ.get("GOVNODE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
LAPTOP = {"width": 1366, "height": 768}


@asynccontextmanager
async def launched() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


def _user_add(home: Path, username: str, dept: str, role: str | None, name: str | None) -> list[str]:
    argv = ["user", "add", username, "--dept", dept, "--dir", str(home)]
    argv += ["--role", role] if role else []
    return argv + (["--name", name] if name else [])


def add_person(home: Path, username: str, dept: str, role: str | None = None, name: str | None = None) -> str:
    """`govnode user add` through the real CLI; returns the initial password (the last line it prints)."""
    rc, out, err = run_cli(_user_add(home, username, dept, role, name))
    assert rc == 0, err
    return out.strip().splitlines()[-1]


async def add_person_async(home: Path, username: str, dept: str, role: str | None = None,
                           name: str | None = None) -> str:
    """Like `add_person`, for a node this loop serves among others (a tree): the command runs beside the loop,
    so it never waits on a write the blocked loop holds open."""
    rc, out, err = await run_cli_full_async(_user_add(home, username, dept, role, name))
    assert rc == 0, err
    return out.strip().splitlines()[-1]


class Portal:
    """One browser tab on one node's portal."""

    def __init__(self, context: BrowserContext, page: Page, base_url: str, shots: Path) -> None:
        self.context, self.page, self.base_url, self.shots = context, page, base_url.rstrip("/"), shots
        self.problems: list[str] = []
        self._console: list[tuple[str, str]] = []
        # Pages answered with an error status on purpose (a refused form shown again, the 404 page).
        self._error_pages: set[str] = set()
        page.on("console", lambda m: m.type == "error" and self._console.append((m.text, m.location.get("url", ""))))
        page.on("pageerror", lambda e: self.problems.append(f"script error: {e}"))
        # A request the browser cancels because the page moved on (ERR_ABORTED) did not fail.
        page.on("requestfailed", lambda r: r.failure != "net::ERR_ABORTED"
                and self.problems.append(f"request failed: {r.url} {r.failure}"))
        page.on("response", self._response)

    def _response(self, resp: Response) -> None:
        if resp.status < 400:
            return
        if resp.request.resource_type == "document" or resp.url in self._error_pages:
            self._error_pages.add(resp.url)
        else:  # what a page loads must never fail
            self.problems.append(f"{resp.request.resource_type} {resp.url} answered {resp.status}")

    def expect_error(self, path: str) -> None:
        """A request the page's own script sends to `path` may be answered with an error on purpose (a refused
        form, which the script then shows)."""
        self._error_pages.add(self.base_url + path)

    async def goto(self, path: str) -> Response | None:
        return await self.page.goto(self.base_url + path)

    async def fill(self, label: str, value: str) -> None:
        await self.page.get_by_label(label, exact=True).fill(value)

    async def press(self, button: str) -> Response:
        """Click the button named `button`; the answer of the page it leads to (after any redirect)."""
        async with self.page.expect_navigation() as navigation:
            await self.page.get_by_role("button", name=button, exact=True).click()
        return await navigation.value

    async def sign_in(self, username: str, password: str) -> Response:
        if not self.page.url.startswith(self.base_url + "/portal/login"):
            await self.goto("/portal/login")
        await self.fill("用户名", username)
        await self.fill("密码", password)
        return await self.press("登录")

    async def first_sign_in(self, username: str, initial: str, new: str) -> None:
        """Sign in with the initial password and set a new one, as the portal makes a person do first."""
        await self.sign_in(username, initial)
        assert self.path == "/portal/password", self.page.url
        await self.fill("新密码", new)
        await self.fill("确认新密码", new)
        await self.press("保存新密码")
        assert self.path == "/portal/", self.page.url

    @property
    def path(self) -> str:
        return re.sub(r"^https?://[^/]+", "", self.page.url).split("?")[0]

    async def text(self) -> str:
        return await self.page.inner_text("body")

    async def alert(self) -> str:
        """The message a refused form is shown again with (empty when there is none)."""
        alerts = self.page.get_by_role("alert")
        return "\n".join([await alerts.nth(i).inner_text() for i in range(await alerts.count())])

    async def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=False)
        return path

    async def cookie(self, name: str) -> dict[str, Any] | None:
        return next((c for c in await self.context.cookies() if c["name"] == name), None)

    def assert_clean(self) -> None:
        # Chromium logs every error status as a console error, the page's own included: those are expected.
        self.problems += [f"console: {text} ({url})" for text, url in self._console
                          if not (text.startswith("Failed to load resource") and url in self._error_pages)]
        assert not self.problems, "the pages had script errors or failed requests:\n" + "\n".join(self.problems)
