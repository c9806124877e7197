"""`govnode demo` (issue 3, SPEC §14) run as the README runs it: one process that builds the four-node
federation, prints every node's portal with its logins, every token and some calls to paste; a printed
login signs in and the printed calls answer as the banner says;
Ctrl-C stops every node with exit 0; and the demo starts again at once on the same ports."""

from __future__ import annotations

import http.cookiejar
import json
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BANNER_END = "Health, peers and outboxes of the city:"


def free_base_port() -> int:
    """A base port whose four demo ports nobody listens on."""
    rng = random.Random()
    for _ in range(200):
        # Below Linux's ephemeral range (32768-60999): there, another test's client connection can take one of
        # the four ports between this check and the demo's own, which the last assertion below would misread.
        base = rng.randrange(10000, 32000)
        try:
            for port in range(base, base + 4):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no four free ports in a row")


class Demo:
    def __init__(self, home: Path, base_port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", "demo", "--dir", str(home),
                                      "--base-port", str(base_port)], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def banner(self, timeout_s: float = 150) -> str:
        """Everything printed up to the last call of the banner; fails if the demo ends first."""
        while True:
            line = self.lines.get(timeout=timeout_s)
            assert line is not None, f"the demo ended (exit {self.proc.wait()}) before its banner:\n" + "".join(self.out)
            self.out.append(line)
            if self.out[-2:-1] and self.out[-2].strip() == BANNER_END:
                return "".join(self.out) + "\n"  # the blank line that ends the last call

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=60)
        while (line := self.lines.get(timeout=10)) is not None:
            self.out.append(line)
        return code, "".join(self.out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def curl(command: str) -> Any:
    """Carry out one printed `curl -s` call (its URL, headers and body) and return the JSON answer."""
    url = re.search(r"(http://\S+?)'?(?:\s|$)", command).group(1)
    headers = dict(h.split(": ", 1) for h in re.findall(r"-H '([^']*)'", command))
    body = re.search(r"-d '(.*)'", command)
    req = urllib.request.Request(url, data=body.group(1).encode() if body else None, headers=headers,
                                 method="POST" if "-X POST" in command else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def sign_in(portal: str, username: str, password: str) -> str:
    """Sign in to a portal as its sign-in form does; where the portal sends the person next."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                         NoRedirect())
    with opener.open(portal + "login", timeout=30) as resp:
        token = re.search(r'name="csrf" value="([^"]+)"', resp.read().decode()).group(1)
    form = urllib.parse.urlencode({"csrf": token, "username": username, "password": password}).encode()
    try:
        opener.open(portal + "login", data=form, timeout=30)
    except urllib.error.HTTPError as answer:
        assert answer.code == 303, answer.code
        return answer.headers["Location"]
    raise AssertionError("signing in did not redirect")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def test_demo_runs_answers_its_printed_calls_stops_cleanly_and_restarts(tmp_path):
    home, base = tmp_path / "demo", free_base_port()
    demo = Demo(home, base)
    try:
        text = demo.banner()
        # Each node's URL and home, and a token for each department.
        for code, name, off in (("370000", "山东省", 0), ("370300", "淄博市", 1), ("370321", "桓台县", 2),
                                ("370303", "张店区", 3)):
            assert re.search(rf"^  {code} {name}\s+http://127\.0\.0\.1:{base + off}\b", text, re.M), text
        assert len(re.findall(r"^      dept\s+\S{18} .+: gnt_\S+$", text, re.M)) >= 8, text
        calls = [c.replace("\\\n", " ") for c in re.findall(r"^  (curl .*?)(?=\n\n)", text, re.M | re.S)]
        assert len(calls) == 6, calls
        verify, catalog, query, gather, check, health = calls
        # A 桓台县 clerk verifies a citizen held by the province, routed county → city → province.
        answer = curl(verify)
        assert answer["match"] is True and answer["via"] == ["370300", "370000"], answer
        # The county's catalog holds the whole federation's resources.
        page = curl(catalog)
        assert page["total"] >= 4 and page["entries"], page
        # The query comes back through the tree with the sensitive items masked.
        answer = curl(query)
        (record,) = answer["records"]
        assert answer["via"] == ["370300", "370000"] and "*" in record["id_number"], answer
        # 一证通办 at the county: the province's register and 张店区's insurance records replace three of four.
        answer = curl(gather)
        outcomes = {m["id"]: (m["outcome"], m["via"]) for m in answer["materials"]}
        assert outcomes == {"m1": ("obtained", ["370300", "370000"]), "m2": ("verified", ["370300", "370000"]),
                            "m3": ("obtained", ["370300", "370303"]), "m4": ("not_shareable", [])}, answer
        status = curl(health)
        # The county's blacklist, checked at the other county from its own copy.
        answer = curl(check)
        (result,) = answer["results"]
        assert result["hit"] and result["hits"][0]["issuer"]["node"] == "370321", answer
        # Each node's portal, with a login for a clerk, an operator and an auditor; the 桓台县 clerk's works.
        portals = re.findall(r"^  (http://127\.0\.0\.1:(\d+)/portal/) ", text, re.M)
        assert [int(port) for _, port in portals] == [base, base + 1, base + 2, base + 3], text
        logins = re.findall(r"^      user (\w+)\s+password (\S+) ", text, re.M)
        assert [u for u, _ in logins] == ["clerk", "operator", "auditor"] * 4, text
        assert sign_in(portals[2][0], *logins[6]) == "/portal/password"  # the first sign-in sets a new password
        assert status["status"] == "ok" and set(status["federation"]["peers"]) == {"370000", "370321", "370303"}
        code, text = demo.interrupt()
        assert code == 0 and "all demo nodes stopped" in text, text
        # Ctrl-C and start again: the ports the last run served on (their closed connections still in
        # TIME_WAIT) are free to serve on again.
        demo = Demo(home, base)
        text = demo.banner()
        answer = curl(re.search(r"^  (curl .*?)(?=\n\n)", text, re.M | re.S).group(1).replace("\\\n", " "))
        assert answer["match"] is True, answer
        code, text = demo.interrupt()
        assert code == 0, text
        # A port something else listens on is refused before anything starts.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", base + 1))
            other.listen()
            refused = subprocess.run([sys.executable, "-m", "node.cli", "demo", "--dir", str(home), "--base-port",
                                      str(base)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                                     stdin=subprocess.DEVNULL)
        assert refused.returncode == 2 and f"ports [{base + 1}] are in use" in refused.stderr, refused
    finally:
        demo.kill()
