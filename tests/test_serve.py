"""`lossearch serve`: the dashboard's routes on a real server over a real store (SQLite, and PostgreSQL
when LOSSEARCH_TEST_POSTGRES_URL names one), the command's one-line refusals, and the page itself in
a real headless Chromium beside a campaign that writes to the store while the page is open."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import run_cli, start_cli

from lossearch.ranking import load_campaign_data
from lossearch.reporting.results import build_leaderboard
from lossearch.search.seeds import seed_path
from lossearch.store import Store
from lossearch.store.locate import open_campaign

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_REQUIRED = os.environ.get("LOSSEARCH_REQUIRE_BROWSER") == "1"
"""CI sets it (.ci/run installs Chromium): there a missing browser fails the test instead of skipping it."""
HOSTILE_NAME = '<img src=x onerror="window.pwned=1">dpo'
HOSTILE_SOURCE = seed_path("dpo").read_text().replace(
    '"""DPO', '"""<script>window.pwned=2</script> DPO', 1)
HOSTILE_IDEA = "</pre><script>window.pwned=3</script>"
HOSTILE_NOTE = "<script>window.pwned=4</script> the blends do best"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def get_json(url: str):
    status, _, body = get(url)
    assert status == 200, body
    return json.loads(body)


@contextmanager
def dashboard_server(store: Store, campaign) -> Iterator[str]:
    """The dashboard's app under a real uvicorn server in a thread, on a free loopback port."""
    import uvicorn

    from lossearch.reporting.dashboard import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, campaign), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the dashboard did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def hostile_campaign(store: Store):
    """DPO and a child of it whose name, docstring and idea hold HTML and script, both scored."""
    campaign = store.create_campaign("hostile", {"task": "sentiment", "proposer": "mutation"})
    dpo = store.add_candidate(campaign.id, source=seed_path("dpo").read_text(), name="dpo", proposer="seed",
                              generation=0, status="evaluated")
    child = store.add_candidate(campaign.id, source=HOSTILE_SOURCE, name=HOSTILE_NAME, proposer="mutation",
                                model="blend", generation=1, idea=HOSTILE_IDEA, parents=[(dpo.id, "mutation")],
                                status="evaluated")
    for candidate, fitness in ((dpo, 0.31), (child, 0.35)):
        store.record_evaluation(candidate.id, tier="bandit", task="sentiment", seed=0, fitness=fitness, seconds=0.5,
                                metrics={"reward": fitness + 0.05, "kl": 0.4, "kl_budget": 0.5, "fitness": fitness})
        store.update_candidate(candidate.id, tier="bandit", fitness=fitness)
    store.record_note(campaign.id, 1, author="gpt-test", text=HOSTILE_NOTE)
    store.record_llm_call(campaign.id, model="gpt-test", prompt_tokens=100, completion_tokens=50, cost=0.25,
                          latency=1.5, outcome="ok", candidate_id=child.id)
    return campaign, dpo, child


def test_the_routes_serve_a_store_as_data_and_never_write_to_it(store_url):
    with Store(store_url) as store:
        campaign, dpo, child = hostile_campaign(store)
        with dashboard_server(store, campaign) as base:
            stamp = get_json(f"{base}/api/stamp")["stamp"]
            status, headers, page = get(f"{base}/")
            assert status == 200 and b"/static/dashboard.js" in page
            assert "script-src 'self'" in headers["content-security-policy"]  # no inline script may run
            status, headers, script = get(f"{base}/static/dashboard.js")
            assert status == 200 and b"textContent" in script and "content-security-policy" in headers

            state = get_json(f"{base}/api/state")
            assert [(row["id"], row["name"]) for row in state["leaderboard"]] == [(child.id, HOSTILE_NAME),
                                                                                  (dpo.id, "dpo")]
            assert state["campaign"]["name"] == "hostile" and state["statuses"] == {"evaluated": 2}
            assert state["leaderboard"][0]["verdict"] == "unconfirmed"
            assert state["llm"] == {"calls": 1, "tokens": 150, "cost": 0.25}
            assert state["notes"] == [{"generation": 1, "author": "gpt-test", "text": HOSTILE_NOTE}]

            drawn = get_json(f"{base}/api/charts")
            svgs = [drawn[key] for key in ("fitness", "time", "lineage", "throughput", "failures", "llm",
                                           "operators")] + drawn["reward_kl"]
            assert all(svg.startswith("<svg") for svg in svgs)
            for svg in svgs:  # the hostile name reaches the charts only escaped
                assert "<script" not in svg and "<img" not in svg
                assert not re.search(r"<[^>]*\sonerror=", svg)  # as text in an element, never an attribute
            assert "&lt;img src=x onerror=" in drawn["lineage"]  # its node's tooltip, as text
            assert f'xlink:href="#candidate-{child.id}"' in drawn["lineage"]
            assert "LLM calls: 1, 150 tokens, $0.25" in drawn["llm"]
            assert "blend" in drawn["operators"] and "models" not in drawn  # no child of an LLM here

            report = get_json(f"{base}/api/candidate/{child.id}")
            assert report["source"] == HOSTILE_SOURCE and report["idea"] == HOSTILE_IDEA
            assert [diff["parent"] for diff in report["diffs"]] == [dpo.id]
            assert "+\"\"\"<script>window.pwned=2</script> DPO" in report["diffs"][0]["diff"]
            assert [row["fitness"] for row in report["evaluations"]] == [0.35]
            assert get(f"{base}/api/candidate/999999")[0] == 404

            assert get_json(f"{base}/api/stamp")["stamp"] == stamp  # reading wrote nothing
            late = store.add_candidate(campaign.id, source=seed_path("ipo").read_text(), name="ipo",
                                       proposer="seed", generation=0)
            assert get_json(f"{base}/api/stamp")["stamp"] != stamp  # a write moves it
            assert get_json(f"{base}/api/state")["statuses"] == {"evaluated": 2, "pending": 1}
            assert late.id not in [row["id"] for row in get_json(f"{base}/api/state")["leaderboard"]]


def test_serve_refuses_in_one_line(tmp_path):
    empty = run_cli("serve", cwd=tmp_path, timeout=60)
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1, empty.stderr
    assert "no campaign found" in empty.stderr

    with Store.for_campaign_dir(tmp_path / "runs" / "hostile") as store:
        hostile_campaign(store)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli("serve", "--port", str(port), cwd=tmp_path, timeout=60)
    assert busy.returncode == 2 and busy.stderr.count("\n") == 1, busy.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr and "--port" in busy.stderr

    port = free_port()
    process = start_cli("serve", "--host", "0.0.0.0", "--port", str(port), cwd=tmp_path)
    try:
        warning = process.stderr.readline()
        assert warning.startswith("warning: --host 0.0.0.0: anyone who can reach this machine"), warning
        assert "serving campaign hostile at http://0.0.0.0:" in process.stdout.readline()
    finally:
        process.terminate()
        process.communicate(timeout=30)


# -- in a real browser -----------------------------------------------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
"""Headless Chromium as root on a machine without a network: no sandbox, no background connections."""


@pytest.fixture
def browser():
    if CHROMIUM is None:
        if BROWSER_REQUIRED:
            pytest.fail("LOSSEARCH_REQUIRE_BROWSER=1 but no chromium on PATH (.ci/run installs Debian's)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def watched_page(browser, problems: list[str]):
    """A new page whose console errors, uncaught exceptions, dialogs and requests off this machine go into
    `problems`."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda message: problems.append(f"console: {message.text}") if message.type == "error"
            else None)
    page.on("pageerror", lambda error: problems.append(f"exception: {error}"))
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.on("request", lambda request: problems.append(f"request off the machine: {request.url}")
            if not request.url.startswith(("http://127.0.0.1", "file://", "data:")) else None)
    return page


def wait_until(condition, seconds: float, what: str) -> None:
    """Poll `condition` (locator reads from Python: the page's CSP forbids the evaluated strings of
    Playwright's wait_for_function) until it holds; fail saying `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.2)


def answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


def leaderboard_ids(page) -> list[int]:
    return [int(text) for text in page.locator("#leaderboard tbody tr td:nth-child(2)").all_text_contents()]


def store_leaderboard(home: Path, name: str) -> list[int]:
    with open_campaign(name, runs_dir=home / "runs") as handle:
        data = load_campaign_data(handle.store, handle.campaign)
    return [row.id for row in build_leaderboard(data).rows]


@pytest.mark.slow
def test_the_dashboard_shows_a_running_campaign_live_in_a_browser(tmp_path, browser):
    home = tmp_path
    campaign = start_cli("run", "--name", "live", "--generations", "2", "--population", "3", "--no-finetune",
                         "--no-confirm", cwd=home)
    database = home / "runs" / "live" / "campaign.db"
    deadline = time.monotonic() + 240
    while not (database.is_file() and run_cli("leaderboard", "--run", "live", "--format", "json", cwd=home,
                                              timeout=60).returncode == 0):
        assert campaign.poll() is None, campaign.communicate()
        assert time.monotonic() < deadline, "the campaign stored no scored candidate in 240 s"
        time.sleep(1)
    port = free_port()
    server = start_cli("serve", "--run", "live", "--port", str(port), cwd=home)
    problems: list[str] = []
    try:
        assert "serving campaign live" in server.stdout.readline()
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/api/stamp"), 60, "the server did not answer")
        page = watched_page(browser, problems)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#leaderboard tbody tr", timeout=60_000)
        page.wait_for_selector("#chart-lineage svg", timeout=60_000)
        first = page.locator("#chart-lineage a").count()
        assert first > 0 and campaign.poll() is None, "the campaign ended before the page could watch it"
        # new candidates appear without a reload: the lineage graph grows while the campaign writes
        wait_until(lambda: page.locator("#chart-lineage a").count() > first, 120, "no new candidate appeared")

        out, err = campaign.communicate(timeout=300)
        assert campaign.returncode == 0, err
        final = store_leaderboard(home, "live")
        wait_until(lambda: "status: finished" in page.locator("#facts").text_content(), 60, "not shown finished")
        wait_until(lambda: page.locator("#leaderboard tbody tr").count() == len(final), 60, "rows missing")
        assert leaderboard_ids(page) == final  # the store's rows, in the store's order

        node = page.locator("#chart-lineage a").last  # a node of the last generation: it has a parent
        href = node.get_attribute("xlink:href") or node.get_attribute("href")
        candidate_id = int(re.fullmatch(r"#candidate-(\d+)", href).group(1))
        node.click()
        page.wait_for_selector("#candidate:not([hidden])", timeout=60_000)
        wait_until(lambda: page.locator("#candidate-title").text_content().startswith(f"#{candidate_id} "), 60,
                   "the clicked node's candidate is not shown")
        with open_campaign("live", runs_dir=home / "runs") as handle:
            chosen = handle.store.get_candidate(candidate_id)
        assert page.locator("#candidate-code").text_content() == chosen.source
        if chosen.proposer != "seed":
            assert page.locator("#candidate-diffs pre").count() >= 1
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=False)

        # a hostile candidate written now shows as text, and nothing it holds runs
        with Store.for_campaign_dir(home / "runs" / "live") as store:
            live = store.get_campaign("live")
            hostile = store.add_candidate(live.id, source=HOSTILE_SOURCE, name=HOSTILE_NAME, proposer="mutation",
                                          generation=7, idea=HOSTILE_IDEA, status="evaluated")
            store.record_evaluation(hostile.id, tier="bandit", task="sentiment", seed=0, fitness=9.0, seconds=0.1,
                                    metrics={"reward": 9.0, "kl": 0.1, "fitness": 9.0})
        wait_until(lambda: leaderboard_ids(page)[:1] == [hostile.id], 60, "the hostile candidate is not on top")
        assert page.locator("#leaderboard tbody tr td:nth-child(3)").first.text_content() == HOSTILE_NAME
        page.locator("#leaderboard tbody tr").first.click()
        wait_until(lambda: "pwned=3" in page.locator("#candidate-idea").text_content(), 60, "its idea is not shown")
        assert page.evaluate("window.pwned") is None
        page.close()  # before the server goes: its polls would fail
    finally:
        server.terminate()
        server.communicate(timeout=30)
        if campaign.poll() is None:
            campaign.kill()
            campaign.communicate()
    assert problems == []

    # the static report of the same campaign, opened from its file: its charts, no script, no network
    report = run_cli("report", "--run", "live", "--out", str(tmp_path / "report.html"), cwd=home, timeout=300)
    assert report.returncode == 0, report.stderr
    problems = []
    page = watched_page(browser, problems)
    page.goto((tmp_path / "report.html").as_uri())
    assert page.locator("svg").count() >= 6
    assert page.locator("script").count() == 0
    assert page.locator("#candidate-" + str(final[0])).count() == 1  # the lineage links land on its row
    page.screenshot(path=str(tmp_path / "report.png"))
    assert problems == []


def test_a_large_store_reports_readable_and_small(tmp_path, monkeypatch):
    """Past RASTER_ABOVE points a scatter is one embedded image, the lineage graph draws at most
    LINEAGE_NODES and says so, the report lists REPORT_ROWS rows: the file stays small. The limits are
    cut here so that 300 candidates cross them (benchmarks/store_scale.py measures 10,000 with the real ones)."""
    from lossearch.reporting import charts, report
    from lossearch.store.locate import CampaignHandle

    monkeypatch.setattr(charts, "RASTER_ABOVE", 200)
    monkeypatch.setattr(charts, "LINEAGE_NODES", 80)
    monkeypatch.setattr(report, "REPORT_ROWS", 50)
    size = 300
    with store_scale().build_store(tmp_path / "big.db", size) as store:
        campaign = store.get_campaign("big")
        vector = report.report_html(load_campaign_data(store, campaign))
        monkeypatch.setattr(charts, "RASTER_ABOVE", 2000)
        monkeypatch.setattr(charts, "LINEAGE_NODES", 2000)
        html = report.write_report(CampaignHandle(store, campaign, "big"), tmp_path / "report.html").read_text()
    assert html.count("<image") == 0 and vector.count("<image") >= 2  # the fitness and reward-KL scatters
    assert len(vector) < len(html)
    assert "Lineage of big (80 of 300 candidates" in vector and "Lineage of big</text>" in html
    assert vector.count('xlink:href="#candidate-') == 80
    assert vector.count('<tr class="') == 50 and f"{size - 50} more rows" in vector


def store_scale():
    """benchmarks/store_scale.py as a module: its store builder writes candidates as a campaign does."""
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("store_scale", Path(__file__).parent.parent / "benchmarks" / "store_scale.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_campaign_past_the_sampling_size_is_reported_from_a_sample_and_its_kept_scores(tmp_path, monkeypatch):
    """Past SAMPLED_ABOVE candidates the report plots a uniform sample (with its parents, the seeds and the
    leaderboard's rows) and says so, while its leaderboard and counts stay the whole campaign's. The sizes
    are cut here so that 300 candidates cross them (benchmarks/store_scale.py measures 100,000)."""
    from lossearch.reporting import report
    from lossearch.store.locate import CampaignHandle

    monkeypatch.setattr(report, "SAMPLED_ABOVE", 60)
    monkeypatch.setattr(report, "REPORT_ROWS", 20)
    with store_scale().build_store(tmp_path / "big.db", 300) as store:
        campaign = store.get_campaign("big")
        inputs = report.report_inputs(store, campaign)
        full = build_leaderboard(load_campaign_data(store, campaign), top=20)
        html = report.write_report(CampaignHandle(store, campaign, "big"), tmp_path / "report.html").read_text()
    assert inputs.sampled_from == 300 and inputs.statuses == {"evaluated": 300}
    assert inputs.board.to_dicts() == full.to_dicts()  # the first rows, ranked among all 300
    sampled = set(inputs.data.candidates)
    assert {row.id for row in full.rows} <= sampled and set(range(1, 42)) <= sampled  # leaders and seeds
    assert 60 + 41 <= len(sampled) < 300
    assert all(edge.parent_id in sampled for edges in inputs.data.children.values() for edge in edges)
    assert "This campaign holds 300 candidates" in html and "300 evaluated" in html
    assert html.count('<tr class="') == 20 and html.count("<svg") >= 6 and "280 more rows" in html

    # the dashboard reads it the same way: whole counts and leaderboard, charts from the sample, and a
    # candidate the sample left out still opens with its parents and children
    with Store(f"sqlite:///{tmp_path / 'big.db'}") as store:
        campaign = store.get_campaign("big")
        with dashboard_server(store, campaign) as url:
            state = get_json(url + "/api/state")
            charts = get_json(url + "/api/charts")
            left_out = next(i for i in range(42, 301) if i not in sampled and store.children(i))
            shown = get_json(f"{url}/api/candidate/{left_out}")
    assert (state["sampled_from"], state["charted"], state["statuses"]) == (300, len(sampled), {"evaluated": 300})
    assert state["evaluations"] == 300 and state["leaderboard_total"] == 300
    assert [row["id"] for row in state["leaderboard"]] == [row.id for row in full.rows]
    assert "<svg" in charts["lineage"] and "<svg" in charts["fitness"]
    assert shown["id"] == left_out and shown["parents"] and shown["children"] and shown["diffs"]
