"""The web page against a live ``ddpm serve``: generate and watch (queue, progress, live
preview, results pixel-equal to the API's PNGs), 422 at its field, cancel, "this image
alone", polling when streams are refused, history, checkpoints, an admin training run
with its live loss curve, labels and phone width, and no request leaving the origin."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import redis
from browser_helpers import assert_same_image, page_pixels, save_screenshot
from svc_helpers import wait_job

pytestmark = pytest.mark.timeout(180)

BLUE = (0x25, 0x63, 0xEB)  # the loss line of app/api/ui/chart.js


def open_page(page, served, hash_: str = "#/generate", ready: str = "generate"):
    page.goto(f"{served.base}/{hash_}")
    page.wait_for_selector(f"body[data-ready={ready}]")
    return page


def wait_attr_at_least(page, selector: str, attr: str, value: float, timeout: float = 60_000):
    page.wait_for_function(
        """([sel, attr, v]) => {
          const e = document.querySelector(sel);
          return e && Number(e.getAttribute(attr)) >= v;
        }""",
        arg=[selector, attr, value],
        timeout=timeout,
    )
    return float(page.get_attribute(selector, attr))


def test_generate_queue_progress_preview_and_results(page, served, screenshot_dir):
    http = served.http
    # Hold the only job thread, so that the page's job waits in the queue first.
    blocker = http.post("/generate", json={"count": 1, "seed": 0, "steps": 1000}).json()
    wait_job(http, blocker["id"], statuses={"running"}, timeout=60)

    open_page(page, served)
    page.select_option("#f-checkpoint", "digits")
    page.fill("#f-count", "16")
    page.fill("#f-seed", "1234")
    page.fill("#f-steps", "120")
    page.select_option("#f-label", "7")
    page.click("#gen-submit")
    page.wait_for_selector("#job[data-status=queued]")
    page.wait_for_selector("#job-queue:not([hidden])")
    assert "next in line" in page.inner_text("#job-queue")

    http.post(f"/jobs/{blocker['id']}/cancel")
    page.wait_for_selector("#job[data-status=running]")
    # The progress bar and the live preview move while it runs.
    first = wait_attr_at_least(page, "#job", "data-preview-step", 1)
    later = wait_attr_at_least(page, "#job", "data-preview-step", max(first + 1, 50))
    assert later > first
    assert float(page.get_attribute("#job-progress", "value")) > 0
    assert "steps" in page.inner_text("#job-progress-text")
    assert page.evaluate("() => document.querySelector('#job-preview').naturalWidth") > 0
    save_screenshot(page, screenshot_dir / "page-generate-live.png")

    page.wait_for_selector("#job[data-status=succeeded][data-results='16']")
    job_id = page.url.rsplit("/", 1)[1]
    doc = http.get(f"/jobs/{job_id}").json()
    assert doc["request"]["seed"] == 1234 and doc["request"]["label"] == 7
    assert page.is_hidden("#job-preview-fig")
    # Each image with its seed; what the page shows is the API's PNG, pixel for pixel.
    assert page.get_attribute("#job-image-5", "data-seed") == "1239"
    assert "seed 1239" in page.inner_text("#job-images li:nth-child(6)")
    assert_same_image(
        page_pixels(page, "#job-image-5"), http.get(doc["result"]["images"][5]["url"]).content
    )
    assert_same_image(page_pixels(page, "#job-grid"), http.get(doc["result"]["grid_url"]).content)
    href = page.get_attribute("#job-images li:nth-child(6) a[download]", "href")
    assert href == doc["result"]["images"][5]["url"]
    save_screenshot(page.locator("#job"), screenshot_dir / "page-results.png")


def test_this_image_alone_gives_equal_pixels(page, served):
    http = served.http
    body = {"count": 4, "seed": 77, "steps": 20, "label": 2, "checkpoint": "digits"}
    job = http.post("/generate", json=body).json()
    doc = wait_job(http, job["id"], timeout=90)
    assert doc["status"] == "succeeded"
    open_page(page, served, f"#/job/{job['id']}")
    page.wait_for_selector("#job[data-status=succeeded][data-results='4']")
    page.click("#job-images button[data-index='3']")
    page.wait_for_function("(old) => !location.hash.endsWith(old)", arg=job["id"])
    page.wait_for_selector("#job[data-status=succeeded][data-results='1']")
    alone = http.get(f"/jobs/{page.url.rsplit('/', 1)[1]}").json()
    assert alone["request"]["count"] == 1 and alone["request"]["seed"] == 80
    assert page.get_attribute("#job-image-0", "data-seed") == "80"
    # The image made alone equals image 3 of the four.
    assert_same_image(
        page_pixels(page, "#job-image-0"), http.get(doc["result"]["images"][3]["url"]).content
    )


def form_values(page) -> dict[str, str]:
    ids = ("f-checkpoint", "f-version", "f-count", "f-seed", "f-steps", "f-sampler", "f-label")
    return {i[2:]: page.input_value(f"#{i}") for i in ids}


def test_the_form_follows_the_job_on_screen(page, served):
    http = served.http
    body = {"count": 3, "seed": 12345, "steps": 12, "sampler": "ddpm", "label": 5}
    job = http.post("/generate", json=body | {"checkpoint": "digits"}).json()
    assert wait_job(http, job["id"], timeout=90)["status"] == "succeeded"
    # A job opened by its link, and again after a reload: the form holds its settings.
    open_page(page, served, f"#/job/{job['id']}")
    page.wait_for_selector("#job[data-status=succeeded][data-results='3']")
    want = {"checkpoint": "digits", "version": "builtin", "count": "3", "seed": "12345"}
    want |= {"steps": "12", "sampler": "ddpm", "label": "5"}
    assert form_values(page) == want
    page.reload()
    page.wait_for_selector("#job[data-status=succeeded][data-results='3']")
    assert form_values(page) == want
    # "This image alone": the form says what runs now, count 1 with that image's seed.
    page.click("#job-images button[data-index='2']")
    page.wait_for_selector("#job[data-status=succeeded][data-results='1']")
    assert form_values(page) == want | {"count": "1", "seed": "12347"}
    # Edited, then "Use these settings": the job's settings again.
    page.fill("#f-count", "7")
    page.fill("#f-steps", "40")
    page.click("#job-use")
    assert form_values(page) == want | {"count": "1", "seed": "12347"}
    # "Generate with this" on a checkpoint starts a fresh panel, not the last job.
    page.click("nav a[data-view=checkpoints]")
    page.wait_for_selector("body[data-ready=checkpoints]")
    page.locator("article[data-ref='digits@builtin'] a", has_text="Generate with this").click()
    page.wait_for_selector("body[data-ready=generate]")
    page.wait_for_selector("#job[data-status=none]")
    assert page.is_visible("#job-empty") and page.is_hidden("#job-body")


def test_bad_job_links_say_so_in_words(page, served):
    open_page(page, served, "#/job/not-a-uuid")
    page.wait_for_selector("#job[data-status=unknown]")
    text = page.inner_text("#job-error")
    assert "“not-a-uuid” is not a job id" in text, text
    assert "pattern" not in text and "path.job_id" not in text
    assert page.inner_text("#job-status") == "unknown"
    unknown = str(uuid.uuid4())
    page.goto(f"{served.base}/#/job/{unknown}")
    page.wait_for_function(
        "() => document.querySelector('#job-error').textContent.includes('has expired')"
    )
    assert unknown in page.inner_text("#job-error")
    assert page.inner_text("#job-status") == "unknown" and page.is_hidden("#job-cancel")
    # The training view too.
    page.goto(f"{served.base}/#/train?job=nope")
    page.wait_for_selector("body[data-ready=train]")
    page.wait_for_selector("#train-job[data-status=unknown]")
    assert "“nope” is not a job id" in page.inner_text("#train-error")


def test_phone_generate_brings_the_job_into_view(page, served):
    page.set_viewport_size({"width": 390, "height": 844})
    open_page(page, served)
    page.fill("#f-count", "2")
    page.fill("#f-steps", "10")
    # The button at the bottom of the screen, the job panel below it (out of sight), as
    # a phone shows the form; pressed without Playwright scrolling anything.
    page.evaluate(
        """() => { const b = document.querySelector('#gen-submit').getBoundingClientRect();
                   window.scrollBy(0, b.bottom - innerHeight + 8); }"""
    )
    assert page.evaluate("() => document.querySelector('#job').getBoundingClientRect().top") > 844
    page.focus("#gen-submit")
    page.keyboard.press("Enter")
    page.wait_for_selector("#job:not([data-status=none])")
    page.wait_for_function(
        """() => { const r = document.querySelector('#job').getBoundingClientRect();
                   return r.top >= 0 && r.top < innerHeight / 3; }""",
        timeout=5_000,
    )
    page.wait_for_selector("#job[data-status=succeeded][data-results='2']", timeout=90_000)


def test_a_one_image_job_shows_its_image_once(page, served):
    open_page(page, served)
    page.fill("#f-count", "1")
    page.fill("#f-steps", "8")
    page.click("#gen-submit")
    page.wait_for_selector("#job[data-status=succeeded][data-results='1']")
    assert page.is_hidden("#job-grid-fig")  # no grid of the same image again
    assert page.locator("#job-images button", has_text="This image alone").count() == 0
    seed = page.locator("#job-images .seed")
    assert seed.evaluate("e => e.getClientRects().length") == 1  # one line, never wrapped


def test_a_webp_job_shows_and_downloads_webp_files(page, served):
    open_page(page, served)
    assert page.is_hidden("#quality-field")  # png: no quality to set
    page.select_option("#f-format", "webp")
    assert page.is_visible("#quality-field")
    assert "1 to 100" in page.inner_text("label[for=f-quality]")
    page.fill("#f-quality", "0")
    page.click("#gen-submit")
    page.locator("[data-error-for=output_quality]").wait_for(state="visible")
    assert page.inner_text("[data-error-for=output_quality]") == "must be at least 1"
    page.fill("#f-quality", "80")
    page.fill("#f-count", "2")
    page.fill("#f-steps", "6")
    page.click("#gen-submit")
    page.wait_for_selector("#job[data-status=succeeded][data-results='2']")
    job = page.evaluate("location.hash").rsplit("/", 1)[-1]
    doc = served.http.get(f"/jobs/{job}").json()
    assert doc["request"]["output_format"] == "webp" and doc["request"]["output_quality"] == 80
    assert page.get_attribute("#job-grid-download", "download").endswith("-grid.webp")
    first = page.locator("#job-images a[download]").first
    assert first.get_attribute("download").endswith(f"_seed{doc['request']['seed']}.webp")
    # The browser decoded the WebP: the image has its pixels.
    assert page.eval_on_selector("#job-image-0", "e => e.complete && e.naturalWidth") > 0


def test_every_field_is_checked_in_one_round_in_plain_words(page, served):
    open_page(page, served)
    limits = served.http.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]
    most = limits["properties"]["count"]["maximum"]
    # The limits show before anything is submitted.
    assert f"1 to {most}" in page.inner_text("label[for=f-count]")
    assert "1 to 1000" in page.inner_text("label[for=f-steps]")
    page.fill("#f-count", "999")
    page.fill("#f-steps", "0")
    page.fill("#f-seed", "-1")
    page.click("#gen-submit")
    errors = {f: page.locator(f"[data-error-for={f}]") for f in ("count", "steps", "seed")}
    for e in errors.values():
        e.wait_for(state="visible")
    assert errors["count"].inner_text() == f"must be at most {most}"
    assert errors["steps"].inner_text() == "must be at least 1"
    assert errors["seed"].inner_text() == "must be at least 0"
    for f in ("f-count", "f-steps", "f-seed"):
        assert page.get_attribute(f"#{f}", "aria-invalid") == "true"
    assert page.evaluate("() => document.activeElement.id") == "f-count"
    assert page.is_hidden("#gen-errors")
    # An error goes as soon as its value is changed; the others stay until theirs are.
    page.fill("#f-count", "2")
    assert page.is_hidden("[data-error-for=count]")
    assert page.get_attribute("#f-count", "aria-invalid") is None
    assert page.is_visible("[data-error-for=steps]") and page.is_visible("[data-error-for=seed]")
    assert page.locator("#job[data-status=none]").count() == 1  # nothing was submitted
    # The service's own wording (pydantic's) is said plainly where the page shows it.
    refused = served.http.post("/generate", json={"count": 0}).json()["detail"][0]
    assert refused["reason"].startswith("Input should be")
    said = page.evaluate("async (r) => (await import('/ui/forms.js')).plain(r)", refused["reason"])
    assert said == "must be at least 1"


def test_cancel(page, served):
    open_page(page, served)
    page.fill("#f-count", "4")
    page.fill("#f-steps", "1000")
    page.click("#gen-submit")
    page.wait_for_selector("#job[data-status=running]")
    wait_attr_at_least(page, "#job", "data-step", 2)
    page.click("#job-cancel")
    page.wait_for_selector("#job[data-status=canceled]")
    job_id = page.url.rsplit("/", 1)[1]
    doc = served.http.get(f"/jobs/{job_id}").json()
    assert doc["status"] == "canceled" and doc["progress"]["step"] < 1000
    # Where it stopped, said once, as a note rather than an error; no stale ETA.
    page.wait_for_selector("#job-note:not([hidden])")
    assert page.inner_text("#job-note") == f"Canceled at step {doc['progress']['step']} of 1000."
    assert page.is_hidden("#job-error") and page.is_hidden("#job-cancel")
    assert page.inner_text("#job-progress-text") == ""
    assert page.inner_text("#job-body").lower().count("canceled") == 2  # the pill, the note


def test_refused_stream_falls_back_to_polling(page, served):
    """A 429 on the event stream (too many streams): the page polls the job instead."""
    refused = []

    def refuse(route):
        refused.append(route.request.url)
        route.fulfill(
            status=429, headers={"Retry-After": "5"}, body='{"detail": "too many streams"}'
        )

    page.route("**/events*", refuse)
    open_page(page, served)
    page.fill("#f-count", "2")
    page.fill("#f-steps", "30")
    page.check("#f-trajectory")  # and the denoising as a GIF
    page.click("#gen-submit")
    page.wait_for_selector("#job[data-status=succeeded][data-results='2']")
    assert refused and page.get_attribute("#job", "data-mode") == "polling"
    job_id = page.url.rsplit("/", 1)[1]
    assert served.http.get(f"/jobs/{job_id}").json()["request"]["trajectory_frames"] == 30
    gif = page.get_attribute("#job-trajectory", "src")
    assert gif == f"/jobs/{job_id}/trajectory.gif" and page.is_visible("#job-trajectory")
    page.wait_for_function("() => document.querySelector('#job-trajectory').naturalWidth > 0")


def test_checkpoints_page_lists_the_builtin_with_its_grid(page, served):
    from PIL import Image

    from ddpm_core.builtin import builtin_path

    open_page(page, served, "#/checkpoints", "checkpoints")
    card = page.locator("article[data-ref='digits@builtin']")
    card.wait_for()
    png = (builtin_path("digits") / "samples.png").read_bytes()
    pixels = page_pixels(page, "article[data-ref='digits@builtin'] img.samples")
    assert pixels.shape[:2] == Image.open(__import__("io").BytesIO(png)).size[::-1]
    assert_same_image(pixels, png)
    text = card.inner_text()
    assert "built in" in text and "cosine, T = 1000" in text and "1,540,737" in text
    # the recorded digits score (IS of the generated samples), as meta.json holds it
    meta = json.loads((builtin_path("digits") / "meta.json").read_text())
    score = meta["metrics"]["digits_score"]["generated"]["inception_score"]
    assert f"{score:.2f}" in text, (score, text)
    # Its recorded command has the training run's defaults; the card says they changed.
    assert "--default-steps 50" in text
    assert "Defaults changed after training: default_steps 50 → 25 → 15" in text
    assert "the config above holds the current ones" in text
    card.locator("a", has_text="Generate with this").click()
    page.wait_for_selector("body[data-ready=generate]")
    assert page.input_value("#f-checkpoint") == "digits"
    assert page.input_value("#f-version") == "builtin"


def test_selects_fit_and_the_choices_are_explained(page, served):
    page.set_viewport_size({"width": 1280, "height": 900})
    open_page(page, served)
    # Every option of every select shows whole (measured in the select's own font).
    cut = page.evaluate(
        """() => {
          const ctx = document.createElement('canvas').getContext('2d');
          const out = [];
          for (const sel of document.querySelectorAll('#gen-form select')) {
            const cs = getComputedStyle(sel);
            ctx.font = `${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
            const pad = parseFloat(cs.paddingLeft) + parseFloat(cs.paddingRight);
            const room = sel.clientWidth - pad - 20;
            for (const o of sel.options) if (ctx.measureText(o.text).width > room) out.push(o.text);
          }
          return out;
        }"""
    )
    assert cut == []
    page.select_option("#f-sampler", "ddim")
    assert page.inner_text("#sampler-hint").startswith("DDIM:")
    page.select_option("#f-sampler", "dpm++2m-sde")
    assert "stochastic" in page.inner_text("#sampler-hint")
    assert "averaged over training" in page.inner_text("#ema-hint")
    page.select_option("#f-label", "")
    assert page.is_disabled("#f-guidance")
    assert page.inner_text("#guidance-hint").startswith("Guidance needs a label")
    page.select_option("#f-label", "4")
    assert page.is_enabled("#f-guidance")
    assert "follow the label" in page.inner_text("#guidance-hint")


def test_admin_training_run_live_curve_then_generate_form(page, served, screenshot_dir):
    token = (served.data / "admin_token").read_text().strip()
    open_page(page, served, "#/train", "train")
    page.fill("#t-name", "browsertrain")
    page.click("#train-submit")
    assert "admin token" in page.inner_text("#err-token")  # asked for it first

    # A wrong token is refused when it is entered, and not kept.
    page.fill("#t-token", token + "x")
    page.click("#token-save")
    page.wait_for_function(
        "() => document.querySelector('#err-token').textContent.includes('refused')"
    )
    assert page.get_attribute("#view-train", "data-token") == "none"
    assert page.evaluate("() => sessionStorage.getItem('ddpm.adminToken')") is None
    page.fill("#t-token", token)
    page.click("#token-save")
    page.wait_for_selector("#view-train[data-token=set]")
    assert page.is_hidden("#err-token")

    # The options in words, with hints; grids during the run by default.
    assert page.inner_text("label[for=t-opt-lr]") == "Learning rate"
    assert "Class cond" not in page.inner_text("#train-form")
    assert page.inner_text("#t-opt-sample_every-hint").startswith("steps between")
    default_steps = int(page.input_value("[name='options.steps']"))
    assert int(page.input_value("[name='options.sample_every']")) == default_steps // 5
    options = {
        "steps": "80",
        "batch_size": "8",
        "warmup": "4",
        "timesteps": "50",
        "default_steps": "5",
        "sample_every": "20",
        "sample_count": "9",
    }
    # A refused option is shown at its field (422 "options.steps"); nothing starts.
    page.fill("[name='options.steps']", "0")
    page.click("#train-submit")
    page.locator("[data-error-for='options.steps']").wait_for(state="visible")
    assert page.get_attribute("[name='options.steps']", "aria-invalid") == "true"
    assert page.locator("#train-job[data-status=none]").count() == 1
    for name, value in options.items():
        page.fill(f"[name='options.{name}']", value)
    page.check("[name='options.class_cond']")
    page.click("#train-submit")
    page.wait_for_selector("#train-job[data-status=running]")
    n1 = wait_attr_at_least(page, "#train-chart", "data-points", 2)
    n2 = wait_attr_at_least(page, "#train-chart", "data-points", n1 + 3)
    assert n2 > n1  # the curve grows while training runs
    page.wait_for_selector("#train-previews img")
    page.wait_for_selector("#train-job[data-status=succeeded]", timeout=150_000)
    points = int(page.get_attribute("#train-chart", "data-points"))
    assert points >= n2
    assert "loss" in page.get_attribute("#train-chart", "aria-label")
    # The curve is drawn: the loss colour is on the canvas.
    px = page.evaluate(
        """() => { const c = document.querySelector('#train-chart');
          return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }"""
    )
    rgba = np.array(px, dtype=np.int32).reshape(-1, 4)
    assert (np.abs(rgba[:, :3] - BLUE).sum(1) < 40).sum() > 50
    steps = [
        int(s)
        for s in page.locator("#train-previews li").evaluate_all("l => l.map(e => e.dataset.step)")
    ]
    assert 20 in steps and 60 in steps, steps
    assert "Published browsertrain@1" in page.inner_text("#train-result")
    save_screenshot(page.locator("#train-job"), screenshot_dir / "page-training.png")

    # The finished run reopened (a reload, as from History): its curve, its last grid and
    # the published samples again, and the form with the run's settings.
    run_url = page.url
    page.goto(f"{served.base}/#/generate")
    page.wait_for_selector("body[data-ready=generate]")
    page.goto(run_url)
    page.reload()
    page.wait_for_selector("#train-job[data-status=succeeded]")
    page.wait_for_selector("#train-result:not([hidden])")
    assert int(page.get_attribute("#train-chart", "data-points")) == points
    assert "Published browsertrain@1" in page.inner_text("#train-result")
    grids = page.locator("#train-previews li")
    assert grids.count() == 1 and "the published samples" in grids.inner_text()
    page.wait_for_function("() => document.querySelector('#train-previews img').naturalWidth > 0")
    for name, value in options.items():
        assert page.input_value(f"[name='options.{name}']") == value, name
    assert page.is_checked("[name='options.class_cond']")
    # A grid shows large on a click.
    grids.locator("button.enlarge").click()
    assert grids.get_attribute("class") == "large"

    # Its events expired (as DDPM_EVENTS_TTL would have them): reopened, the run is
    # drawn from the curve its checkpoint recorded, spanning all 80 steps.
    run_id = run_url.split("job=")[1]
    r = redis.Redis.from_url(served.redis_url)
    assert r.delete(f"{served.prefix}job:{run_id}:events") == 1
    r.close()
    curve = served.http.get(f"/jobs/{run_id}").json()["result"]["loss_curve"]
    assert [int(p[0]) for p in curve] == list(range(1, 81))
    page.reload()
    page.wait_for_selector("#train-result:not([hidden])")
    assert int(page.get_attribute("#train-chart", "data-points")) == len(curve)
    assert "loss" in page.get_attribute("#train-chart", "aria-label")

    # The token stays in this tab's session: never in the URL or in local storage.
    assert token not in page.url
    assert token not in page.evaluate("() => JSON.stringify(localStorage)")
    assert token in page.evaluate("() => JSON.stringify(sessionStorage)")

    # The new version is in the generate form at once; it generates.
    # On the checkpoints page: how to get its scores, and a link to the run that made it.
    page.click("nav a[data-view=checkpoints]")
    card = page.locator("article[data-ref='browsertrain@1']")
    card.wait_for()
    assert "No scores recorded. ddpm eval data/checkpoints/browsertrain/1 --record" in (
        card.inner_text()
    )
    assert card.locator("a.job-link").get_attribute("href") == f"#/train?job={run_id}"
    page.goto(run_url)
    page.wait_for_selector("#train-result:not([hidden])")

    page.click("#train-generate-link")
    page.wait_for_selector("body[data-ready=generate]")
    assert page.input_value("#f-checkpoint") == "browsertrain"
    assert page.input_value("#f-version") == "1"
    # Its default steps: the measured ones (measure_defaults "fast" replaces default_steps).
    config = json.loads((served.data / "checkpoints/browsertrain/1/config.json").read_text())
    assert page.input_value("#f-steps") == str(config["default_steps"])
    page.fill("#f-count", "2")
    page.click("#gen-submit")
    page.wait_for_selector("#job[data-status=succeeded][data-results='2']", timeout=90_000)
    assert "browsertrain@1" in page.inner_text("#job-summary")


def test_history_lists_this_browsers_jobs(page, served):
    open_page(page, served)
    page.fill("#f-count", "3")
    page.fill("#f-steps", "10")
    page.click("#gen-submit")
    page.wait_for_selector("#job[data-status=succeeded][data-results='3']")
    job_id = page.url.rsplit("/", 1)[1]
    page.click("nav a[data-view=history]")
    page.wait_for_selector("body[data-ready=history]")
    entry = f"#history-list li[data-job='{job_id}']"
    page.wait_for_selector(f"{entry}[data-status=succeeded] img.thumb")
    assert "3 images" in page.inner_text(entry)
    thumb = page.get_attribute(f"{entry} img.thumb", "src")
    assert thumb.startswith("data:image/png;base64,")
    # Only ids, kinds, times and thumbnails are kept in the browser.
    stored = page.evaluate("() => JSON.parse(localStorage.getItem('ddpm.history'))")
    assert stored[0]["id"] == job_id
    assert all(set(e) <= {"id", "kind", "t", "thumb"} for e in stored)
    # Clearing can be undone.
    page.click("#history-clear")
    assert page.locator("#history-list li").count() == 0 and page.is_visible("#history-empty")
    assert "History cleared" in page.inner_text("#history-cleared")
    page.click("#history-undo")
    page.wait_for_selector(f"{entry}[data-status=succeeded]")
    assert page.is_hidden("#history-cleared")
    assert page.evaluate("() => JSON.parse(localStorage.getItem('ddpm.history'))") == stored
    page.click(f"{entry} a")
    page.wait_for_selector("#job[data-status=succeeded][data-results='3']")


def test_labels_keyboard_and_phone_width(page, served):
    page.set_viewport_size({"width": 390, "height": 844})
    open_page(page, served)
    for view in ("#/generate", "#/train"):
        page.goto(f"{served.base}/{view}")
        page.wait_for_selector(f"body[data-ready={view[2:]}]")
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea, button')]
                .filter((e) => !e.closest('[hidden]') && !e.closest('dialog'))
                .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                               && !(e.tagName === 'BUTTON' && e.textContent.trim()))
                .map((e) => e.id || e.name || e.outerHTML.slice(0, 60))"""
        )
        assert unlabelled == [], unlabelled
        # Nothing wider than a phone.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    # Keyboard only: Tab from the top reaches the skip link first, Enter in a field submits.
    page.goto(f"{served.base}/#/generate")
    page.reload()  # a fresh document: focus starts at the top
    page.wait_for_selector("body[data-ready=generate]")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.className") == "skip"
    # A view opened from the keyboard moves focus to the content, without a ring round it.
    page.focus("nav a[data-view=history]")
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-ready=history]")
    assert page.evaluate("() => document.activeElement.id") == "main"
    assert page.evaluate("() => getComputedStyle(document.activeElement).boxShadow") == "none"
    page.goto(f"{served.base}/#/generate")
    page.focus("#f-count")
    page.keyboard.press("Control+A")
    page.keyboard.type("1")
    page.focus("#f-steps")
    page.keyboard.press("Control+A")
    page.keyboard.type("10")
    page.keyboard.press("Enter")
    page.wait_for_selector("#job[data-status=succeeded][data-results='1']", timeout=90_000)


def test_no_request_leaves_the_origin(page, browser_context, served):
    """Every request any page of this module made went to the service itself; this test
    adds a watched job and every view, so that it holds on its own too."""
    open_page(page, served)
    page.fill("#f-count", "4")
    page.fill("#f-steps", "150")
    page.click("#gen-submit")
    page.wait_for_selector("#job[data-status=succeeded][data-results='4']", timeout=90_000)
    for view in ("history", "checkpoints", "train"):
        page.click(f"nav a[data-view={view}]")
        page.wait_for_selector(f"body[data-ready={view}]")
    urls = browser_context.requests
    foreign = [u for u in urls if not u.startswith((served.base + "/", "data:", "blob:"))]
    assert foreign == []
    assert any("/events?preview=1" in u for u in urls) and any("/preview.png" in u for u in urls)
    assert any("/ui/" in u for u in urls) and any("/samples.png" in u for u in urls)
