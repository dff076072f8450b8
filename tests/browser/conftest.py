"""Browser tests: the web page in Debian's Chromium (``/usr/bin/chromium``), driven by
Playwright for Python, against live services. Playwright never downloads a browser here.

Without Chromium (or Playwright) the tests skip with the reason; in CI (``CI`` set) that
is an error instead, since `.ci/run` installs the package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_helpers import ROOT, Service, service_env

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

CHROMIUM = Path(os.environ.get("DDPM_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Screenshots for the README: written to docs/images/ when DDPM_UPDATE_SCREENSHOTS=1 (so
# that a test run does not rewrite committed files), else next to the test's files.
UPDATE_SCREENSHOTS = os.environ.get("DDPM_UPDATE_SCREENSHOTS") == "1"


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run in CI: {reason}")
        pytest.skip(reason)
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def browser_context(chromium_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A Chromium with a fresh profile; every request any of its pages makes is logged in
    ``context.requests``."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium_path,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 760},
        )
        context.set_default_timeout(30_000)
        context.requests = []  # type: ignore[attr-defined]
        context.on("request", lambda r: context.requests.append(r.url))  # type: ignore[attr-defined]
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context):
    """A new tab; JavaScript errors on it fail the test."""
    tab = browser_context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    tab.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def served(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``ddpm serve`` (API, gen worker with one job thread, train worker) on the session's
    Redis with a key prefix of its own, serving the built-in ``digits``."""
    tmp = tmp_path_factory.mktemp("served")
    env = service_env(
        tmp / "data",
        redis_url,
        DDPM_PROGRESS_INTERVAL="0.1",
        DDPM_PREVIEW_INTERVAL="0.2",
        DDPM_GEN_CONCURRENCY="1",  # one job at a time: a second one waits in the queue
    )
    svc = Service(["serve", "--concurrency", "1"], env, tmp / "serve.log", "/readyz")
    svc.data = tmp / "data"  # type: ignore[attr-defined]
    svc.redis_url, svc.prefix = redis_url, env["DDPM_KEY_PREFIX"]  # type: ignore[attr-defined]
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    if UPDATE_SCREENSHOTS:
        out = ROOT / "docs" / "images"
        out.mkdir(parents=True, exist_ok=True)
        return out
    return tmp_path
