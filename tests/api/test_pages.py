"""GET /explain and GET /drift: a page for a browser, JSON for everyone else; the pages
loaded from a live server in a real headless Chromium, used as a person would, and
checked against the JSON API they draw."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.browser import Browser, needs_chromium
from tests.support.server import ServerProcess

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
DRIFT_WINDOW = 50
# one pixel of rounding either way, in Chromium's layout of a fraction of a track
PIXEL = 1.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[ServerProcess]:
    """A server whose drift windows close every DRIFT_WINDOW rows."""
    proc = ServerProcess({"DRIFT_WINDOW": str(DRIFT_WINDOW)}, log_dir=tmp_path_factory.mktemp("live")).start()
    proc.wait_ready()
    yield proc
    proc.kill()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    profile = tmp_path / "chromium-profile"
    browser = Browser(profile)
    yield browser
    browser.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.parametrize("path", ["/explain", "/drift"])
def test_a_browser_gets_a_page_that_loads_nothing_from_another_host(live, path):
    resp = requests.get(live.url + path, headers={"Accept": BROWSER_ACCEPT})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert resp.headers["Vary"] == "Accept"
    assert re.findall(r"""(?:src|href)\s*=|https?://|fetch\(\s*["'`]/""", resp.text) == []


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json, text/html"])
def test_api_clients_get_the_drift_report_as_json(live, accept):
    resp = requests.get(live.url + "/drift", headers={"Accept": accept} if accept else {})
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Vary"] == "Accept"
    report = resp.json()
    fields = {"enabled", "window_size", "threshold", "rows_seen", "current", "last_complete", "windows", "episode"}
    assert set(report) == fields


def test_get_explain_tells_an_api_client_how_to_ask_with_a_row_that_works(live, card):
    usage = requests.get(live.url + "/explain").json()
    assert usage["feature_names"] == card["feature_names"]
    example = usage["example"]
    assert example == {"features": {name: card["reference"][name]["mean"] for name in card["feature_names"]}}
    assert requests.post(live.url + "/explain", json=example).status_code == 200


def test_openapi_says_which_gets_answer_a_page(live):
    paths = requests.get(live.url + "/openapi.json").json()["paths"]
    for path in ("/explain", "/drift"):
        assert set(paths[path]["get"]["responses"]["200"]["content"]) == {"application/json", "text/html"}


def bars(browser: Browser, selector: str) -> list[dict]:
    """Each bar the page drew: its data attributes, its box and its track's box, in pixels."""
    return browser.evaluate(
        f"""[...document.querySelectorAll({selector!r})].map(b => {{
            const r = b.getBoundingClientRect(), t = b.parentElement.getBoundingClientRect();
            return {{...b.dataset, left: r.left - t.left, width: r.width, track: t.width,
                     colour: getComputedStyle(b).backgroundColor, sign: b.classList.contains('pos') ? 1 : -1}};
        }})"""
    )


def mark(browser: Browser, cls: str) -> float:
    """Where a waterfall's base value or output mark sits in its track, in pixels."""
    return browser.evaluate(
        f"(m => m.getBoundingClientRect().left + 1 - m.parentElement.getBoundingClientRect().left)"
        f"(document.querySelector('.mark.{cls}'))"
    )


@needs_chromium
def test_explanation_page_draws_the_waterfall_of_the_attributions_post_explain_gives(live, browser, card, tmp_path):
    names = card["feature_names"]
    browser.open(live.url + "/explain")
    shown = browser.evaluate("[...document.querySelectorAll('label')].map(l => [l.textContent, l.control.value])")
    assert [label for label, _ in shown] == names
    for (_, value), name in zip(shown, names):
        assert float(value) == pytest.approx(card["reference"][name]["mean"], rel=1e-5)

    edited = names.index("worst concave points")
    browser.type_into(f"#f{edited}", "0.25")
    browser.click("#submit")
    assert browser.wait_for("!document.getElementById('result').hidden"), browser.evaluate("document.body.innerText")
    browser.screenshot(tmp_path / "explain.png")

    row = {name: float(value) for name, value in shown}
    row["worst concave points"] = 0.25
    answer = requests.post(live.url + "/explain", json={"features": row}).json()["explanations"][0]
    prediction = browser.evaluate("document.getElementById('prediction').textContent")
    assert prediction == f"Prediction: {answer['prediction']}"

    drawn = bars(browser, ".bar")
    ranked = sorted(answer["attributions"].items(), key=lambda kv: -abs(kv[1]))
    features = [b for b in drawn if b["grouped"] == "false"]
    assert [(b["feature"], float(b["attribution"])) for b in features] == ranked[: len(features)]
    [rest] = [b for b in drawn if b["grouped"] == "true"]
    assert float(rest["attribution"]) == pytest.approx(sum(v for _, v in ranked[len(features) :]), abs=1e-12)

    # every bar starts where the one before it ended, from the base value to the output,
    # as long as its attribution on the track's scale, red up and blue down
    base, output = mark(browser, "base"), mark(browser, "output")
    pixels_per_unit = abs((output - base) / (answer["output"] - answer["base_value"]))
    position = base
    for bar in drawn:
        value = float(bar["attribution"])
        assert bar["width"] == pytest.approx(abs(value) * pixels_per_unit, abs=PIXEL), bar
        start, end = (bar["left"], bar["left"] + bar["width"])[:: bar["sign"]]
        assert start == pytest.approx(position, abs=PIXEL) and bar["sign"] == (1 if value >= 0 else -1), bar
        position = end
    assert position == pytest.approx(output, abs=PIXEL)
    assert {b["colour"] for b in drawn if b["sign"] > 0} == {"rgb(214, 64, 78)"}
    assert {b["colour"] for b in drawn if b["sign"] < 0} == {"rgb(47, 123, 209)"}


@needs_chromium
def test_explanation_page_shows_what_the_server_refused(live, browser):
    browser.open(live.url + "/explain")
    browser.type_into("#f0", "abc")
    browser.click("#submit")
    error = browser.wait_for("(e => e.hidden ? '' : e.textContent)(document.getElementById('error'))")
    assert error.startswith("422: ") and "mean radius" in error, error


@needs_chromium
def test_drift_page_draws_psi_per_feature_against_the_threshold_and_the_worst_features_bins(
    live, browser, dataset, tmp_path
):
    x, names = dataset
    # training rows, but a recalibrated scanner reads textures 60% higher
    drifted = np.random.default_rng(0).permutation(x)[: DRIFT_WINDOW * 2]
    drifted[:, [i for i, name in enumerate(names) if "texture" in name]] *= 1.6
    requests.post(live.url + "/predict", json={"instances": drifted.tolist()}).raise_for_status()
    report = requests.get(live.url + "/drift").json()
    for _ in range(100):
        if report["last_complete"] is not None:
            break
        time.sleep(0.05)
        report = requests.get(live.url + "/drift").json()
    window = report["last_complete"]
    assert window is not None, report

    browser.open(live.url + "/drift")
    browser.screenshot(tmp_path / "drift.png")
    drawn = bars(browser, ".psi .bar")
    expected = {name: f["psi"] for name, f in window["features"].items()} | {"predictions": window["prediction_psi"]}
    assert {b["feature"]: float(b["psi"]) for b in drawn} == expected
    scale = max(report["threshold"] * 1.5, *expected.values())
    for bar in drawn:
        assert bar["width"] == pytest.approx(float(bar["psi"]) / scale * bar["track"], abs=PIXEL), bar
    thresholds = browser.evaluate(
        "[...document.querySelectorAll('.psi .threshold')].map(t => t.getBoundingClientRect().left + 1"
        " - t.parentElement.getBoundingClientRect().left)"
    )
    assert thresholds == pytest.approx([report["threshold"] / scale * drawn[0]["track"]] * len(drawn), abs=PIXEL)

    worst = max(window["features"], key=lambda name: window["features"][name]["psi"])
    assert browser.evaluate("document.getElementById('worst').textContent").startswith(worst + " ")
    bins = window["features"][worst]
    for kind in ("reference", "live"):
        script = f"[...document.querySelectorAll('.{kind}[data-bin]')].map(b => [b.dataset.bin, +b.dataset.share])"
        shares = browser.evaluate(script)
        assert shares == [[name, share] for name, share in zip(bins["bins"], bins[kind])], kind


@pytest.mark.parametrize("path", ["/explain", "/drift"])
def test_pages_run_only_their_own_script_and_may_not_be_framed(live, path):
    resp = requests.get(live.url + path, headers={"Accept": BROWSER_ACCEPT})
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    policy = dict(d.strip().split(" ", 1) for d in resp.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert policy["connect-src"] == "'self'" and policy["form-action"] == "'none'"
    assert re.fullmatch(r"'sha256-[A-Za-z0-9+/]{43}='", policy["style-src"]), policy["style-src"]
    # Two scripts: the one every page shares (pages/common.js, put in where the page says),
    # then the page's own; the policy allows exactly those.
    scripts = re.findall(r"<script>(.*?)</script>", resp.text, re.DOTALL)
    assert len(scripts) == 2 and "function el(" in scripts[0] and "<!-- common.js -->" not in resp.text
    allowed = ["'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'" for s in scripts]
    assert policy["script-src"] == " ".join(allowed)
    json_answer = requests.get(live.url + path)
    assert "Content-Security-Policy" not in json_answer.headers  # an API answer is no page


# Registered before a page's own script runs (DevTools scripts are not held to the page's
# policy): every rule the page breaks is counted.
WATCH_VIOLATIONS = (
    "window.violations = [];"
    "document.addEventListener('securitypolicyviolation', e => window.violations.push(e.violatedDirective));"
)
INJECTED = """document.body.insertAdjacentHTML('beforeend', '<img src="data:," onerror="window.ran = true">')"""


@needs_chromium
def test_pages_work_within_their_policy_and_injected_markup_runs_nothing(live, browser):
    browser.send("Page.enable")
    browser.send("Page.addScriptToEvaluateOnNewDocument", source=WATCH_VIOLATIONS)
    browser.open(live.url + "/explain")
    browser.click("#submit")
    assert browser.wait_for("!document.getElementById('result').hidden"), browser.evaluate("document.body.innerText")
    assert mark(browser, "output") != mark(browser, "base")  # styles drawn through the CSSOM took effect
    assert browser.evaluate("window.violations") == []
    browser.open(live.url + "/drift")
    assert browser.evaluate("window.violations") == []

    browser.evaluate(INJECTED)
    assert browser.wait_for("window.violations.some(v => v.startsWith('script-src'))"), browser.evaluate(
        "window.violations"
    )
    assert browser.evaluate("window.ran") is None
