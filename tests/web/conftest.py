"""The studio page in a real browser: Debian's Chromium driven by Playwright for Python, against a
real ``limner studio`` subprocess on a free loopback port with a temporary home, two accounts and
a tiny trained run. Screenshots go to ``test-artifacts/web/`` (ignored by git).

Never ``playwright install``: the browser is /usr/bin/chromium (``apt-get install chromium``).
Outside CI the browser tests skip when it (or playwright) is missing; with CI=true they fail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import shutil
import urllib.request
from http.cookiejar import CookieJar
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("LIMNER_TEST_ARTIFACTS", REPO / "test-artifacts")) / "web"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 375, "height": 740}
PASSWORD = "correct horse battery"
RUN = "tiny"


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: the browser tests never skip in CI (.ci/run installs chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Studio:
    url: str
    home: Path
    data: Path
    log: Path
    proc: subprocess.Popen
    users: dict[str, str] = field(default_factory=dict)
    _openers: dict = field(default_factory=dict)
    data_root: Path | None = None  # the studio's --data-root (folders an admin may train from)

    def api(self, method: str, path: str, body=None, user: str | None = None):
        """A plain HTTP call, as ``user`` when given (the tests' own set-up and checks; the page is
        what is under test)."""
        opener = self._openers.get(user) or urllib.request.build_opener()
        req = urllib.request.Request(self.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Origin": self.url})
        with opener.open(req, timeout=30) as res:
            text = res.read()
            return json.loads(text) if text else None

    def sign_in(self, user: str) -> dict:
        """Log ``user`` in for :meth:`api` (a cookie jar per user); returns GET /api/me."""
        self._openers[user] = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        self.api("POST", "/api/auth/login", {"username": user, "password": self.users[user]}, user=user)
        return self.api("GET", "/api/me", user=user)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "LIMNER_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="session")
def studio(tiny_data, tmp_path_factory):
    """``limner studio`` with two accounts (alice: admin, bob: user), a tiny text run ``tiny`` of
    alice's and a ``--data-root`` folder. The run trains (``limner train``) while the studio starts."""
    root = tmp_path_factory.mktemp("studio")
    home, cache, data_root = root / "home", root / "cache", root / "data-root"
    home.mkdir()
    data_root.mkdir()
    trained = root / "trained" / RUN
    trainer = subprocess.Popen(
        [sys.executable, "-m", "limner", "train", str(tiny_data), "--out", str(trained), "--preset", "tiny",
         "--resolution", "16", "--steps", "4", "--batch-size", "4", "--save-every", "2", "--sample-every", "2",
         "--seed", "1", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(cache))
    port = free_port()
    log = root / "studio.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "limner", "studio", "--home", str(home), "--port", str(port),
                                 "--data-root", str(data_root)], stdout=out, stderr=subprocess.STDOUT, env=_env(cache))
    s = Studio(url=f"http://127.0.0.1:{port}", home=home, data=tiny_data, log=log, proc=proc,
               users={"alice": PASSWORD, "bob": PASSWORD}, data_root=data_root)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"limner studio exited with {proc.returncode}:\n{s.tail()}")
        try:
            if s.api("GET", "/api/health").get("ok"):
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"limner studio did not answer /api/health in 120 s:\n{s.tail()}")
        time.sleep(0.3)
    # The first account is made by the implicit local admin of a loopback studio; it turns accounts on.
    s.api("POST", "/api/users", {"username": "alice", "password": PASSWORD, "role": "admin"})
    alice = s.sign_in("alice")
    s.api("POST", "/api/users", {"username": "bob", "password": PASSWORD, "role": "user"}, user="alice")
    output, _ = trainer.communicate(timeout=300)
    assert trainer.returncode == 0, f"limner train failed:\n{output}"
    # Runs live per user (home/runs/u<id>/<name>): the tiny run is alice's.
    runs = home / "runs" / f"u{alice['id']}"
    runs.mkdir(parents=True, exist_ok=True)
    shutil.move(str(trained), str(runs / RUN))
    yield s
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


class PageErrors(list):
    """Uncaught exceptions and console errors of a page (a test fails on any)."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.web_failed = report.failed


@pytest.fixture
def open_page(browser, studio, request):
    """``open_page(viewport=DESKTOP)``: a fresh browser context (no cookies) on the studio."""
    contexts = []
    errors = PageErrors()

    def make(viewport=DESKTOP):
        context = browser.new_context(viewport=viewport, base_url=studio.url, accept_downloads=True)
        context.set_default_timeout(45_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}")
                if msg.type == "error" and not _expected_console(msg.text) else None)
        page.errors = errors
        return page

    yield make
    for i, context in enumerate(contexts):
        if getattr(request.node, "web_failed", False):  # what the page showed when the test failed
            for j, page in enumerate(context.pages):
                screenshot(page, f"failed-{request.node.name}-{i}{j}")
        context.close()
    assert not errors, "the page reported errors:\n" + "\n".join(errors)


def _expected_console(text: str) -> bool:
    # The browser logs every non-2xx fetch; tests that provoke one (404 of another user's image)
    # check the page's own error state instead.
    return "Failed to load resource" in text


def login(page, studio: Studio, user: str = "alice"):
    """Sign in through the page's form and wait for the navigation to appear."""
    page.goto("/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(studio.users[user])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("navigation", name="Pages").wait_for()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
