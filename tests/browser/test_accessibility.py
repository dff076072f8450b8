"""Accessibility of every view, checked by axe-core (the npm package of tests/browser,
served to the page from that file by the test: nothing is fetched from elsewhere) at a
laptop's and a phone's width: every control labelled, contrast, landmarks, ARIA; 0
serious or critical findings. And the keyboard order of the generate form."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from svc_helpers import wait_job

pytestmark = pytest.mark.timeout(180)

AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


@pytest.fixture(scope="module")
def axe_path() -> Path:
    if not AXE.exists():
        reason = f"{AXE} missing: npm ci --prefix tests/browser"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return AXE


def findings(page, axe_path: Path) -> list[str]:
    """axe's serious and critical violations on the page as it is now."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        # Served at the page's own origin by the test (its CSP allows 'self' only).
        url = page.url.split("#")[0].rstrip("/") + "/__test__/axe.min.js"
        page.route(url, lambda route: route.fulfill(path=str(axe_path)))
        page.add_script_tag(url=url)
    result = page.evaluate(
        "async (tags) => await axe.run(document, {runOnly: {type: 'tag', values: tags}})", TAGS
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:4]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("size", [(1280, 900), (390, 844)], ids=["laptop", "phone"])
def test_axe_finds_nothing_serious_in_any_view(page, served, axe_path, size):
    http = served.http
    job = http.post("/generate", json={"count": 4, "seed": 7, "steps": 8, "label": 3}).json()
    assert wait_job(http, job["id"], timeout=90)["status"] == "succeeded"
    page.set_viewport_size({"width": size[0], "height": size[1]})
    problems: dict[str, list[str]] = {}
    views = [
        ("#/generate", "generate", None),
        (f"#/job/{job['id']}", "generate", "#job[data-results='4']"),
        ("#/history", "history", None),
        ("#/checkpoints", "checkpoints", "article[data-ref='digits@builtin'] img.samples"),
        ("#/train", "train", None),
        ("#/job/not-a-uuid", "generate", "#job[data-status=unknown]"),
    ]
    for hash_, ready, wait_for in views:
        page.goto(f"{served.base}/{hash_}")
        page.wait_for_selector(f"body[data-ready={ready}]")
        if wait_for:
            page.wait_for_selector(wait_for)
        problems[hash_] = findings(page, axe_path)
    # Errors shown at their fields, too.
    page.goto(f"{served.base}/#/generate")
    page.wait_for_selector("body[data-ready=generate]")
    page.fill("#f-count", "999")
    page.click("#gen-submit")
    page.wait_for_selector("[data-error-for=count]:not([hidden])")
    problems["errors"] = findings(page, axe_path)
    assert {k: v for k, v in problems.items() if v} == {}


def test_keyboard_order_follows_the_page(page, served):
    page.goto(f"{served.base}/#/generate")
    page.reload()  # focus starts at the top of a fresh document
    page.wait_for_selector("body[data-ready=generate]")
    order = []
    for _ in range(13):
        page.keyboard.press("Tab")
        order.append(
            page.evaluate(
                "() => document.activeElement.id || document.activeElement.textContent.trim()"
            )
        )
    assert order == [
        "Skip to content",
        "ddpmservice",
        "Generate",
        "History",
        "Checkpoints",
        "Train",
        "f-checkpoint",
        "f-version",
        "f-count",
        "f-seed",
        "seed-random",
        "f-steps",
        "f-sampler",
    ]
    # No control jumps the order.
    assert (
        page.evaluate("() => document.querySelectorAll('[tabindex]:not([tabindex=\"-1\"])').length")
        == 0
    )
