"""`lossearch serve`: a read-only web dashboard over one campaign's store, live while the campaign runs.

Starlette answers a page and four JSON routes; uvicorn serves them. The page (static/, in
the wheel: no asset comes from the network) polls `/api/stamp` every `POLL_SECONDS` and
refetches the state and the charts when the store has changed:

    GET /                     the page
    GET /api/stamp            {"stamp"}: changes with every write to the campaign (Store.change_stamp)
    GET /api/state            the campaign, its leaderboard with verdicts, counts, LLM usage and notes
    GET /api/charts           {name: <svg>}: lossearch.reporting.charts, the report's charts
    GET /api/candidate/{id}   one candidate: code, diff to each parent, idea, evaluations, fingerprint

Nothing is ever written: the store is only read (SQLite in WAL mode lets a reader in while
the campaign writes; PostgreSQL needs nothing). A snapshot of the campaign is loaded once per
stamp and shared by every request until the store changes. Every string from the store is
untrusted: the JSON carries it as data, the page inserts it as text, the charts' SVG is
matplotlib's (which escapes what it writes), and a Content-Security-Policy forbids inline
scripts, so a name holding `<script>` stays a name.
"""

from __future__ import annotations

import difflib
import ipaddress
import threading
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from lossearch.ranking import CampaignData, instruction_stats, load_campaign_part, model_stats, operator_stats
from lossearch.reporting import charts
from lossearch.reporting.report import ReportInputs, report_inputs
from lossearch.reporting.results import Leaderboard, candidate_report
from lossearch.store.store import Store
from lossearch.store.values import Campaign, LLMCall, Note

POLL_SECONDS = 2.0
"""How often the page asks whether the store has changed."""
LEADERBOARD_ROWS = 200
"""Rows of the leaderboard the page lists (`lossearch leaderboard` lists them all)."""
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""Inline styles are matplotlib's SVG attributes; no inline script may run."""


def is_loopback(host: str) -> bool:
    """Whether `host` binds the loopback interface only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Snapshot:
    """The campaign as one stamp of the store saw it; the charts are drawn on first request."""

    stamp: str
    inputs: ReportInputs
    """The campaign, or past report.SAMPLED_ABOVE candidates a sample of it, as the report reads it."""
    totals: tuple[int, float, int]
    """Store.evaluation_totals: evaluations, their seconds, the latest generation (of the whole campaign)."""
    calls: list[LLMCall]
    notes: list[Note]
    _charts: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def data(self) -> CampaignData:
        return self.inputs.data

    @property
    def board(self) -> Leaderboard:
        return self.inputs.board

    def state(self) -> dict[str, Any]:
        campaign, data = self.data.campaign, self.data
        evaluations, seconds, generation = self.totals
        return {
            "stamp": self.stamp, "poll_seconds": POLL_SECONDS,
            "campaign": {"name": campaign.name, "status": campaign.status, "stop_reason": campaign.stop_reason,
                         "task": data.task, "proposer": campaign.config.get("proposer"),
                         "generations": campaign.config.get("generations"),
                         "population": campaign.config.get("population"),
                         "created_at": campaign.created_at.isoformat(),
                         "generation": generation},
            "statuses": self.inputs.statuses,
            "sampled_from": self.inputs.sampled_from,
            "charted": len(data.candidates),
            "evaluations": evaluations,
            "evaluation_seconds": seconds,
            "llm": {"calls": len(self.calls), "tokens": sum(c.prompt_tokens + c.completion_tokens for c in self.calls),
                    "cost": sum(c.cost for c in self.calls)},
            "leaderboard": [row.to_dict() for row in self.board.rows[:LEADERBOARD_ROWS]],
            "leaderboard_total": self.inputs.ranked_total,
            "confirmed": sum(1 for record in data.confirmations.values() if record.confirmed),
            "notes": [{"generation": note.generation, "author": note.author, "text": note.text}
                      for note in self.notes],
        }

    def charts(self) -> dict[str, Any]:
        with self._lock:
            if self._charts is None:
                data = self.data
                drawn: dict[str, Any] = {
                    "fitness": charts.fitness_by_generation(data), "time": charts.fitness_over_time(data),
                    "reward_kl": [charts.reward_against_kl(data, tier) for tier in charts.tiers(data)],
                    "lineage": charts.lineage_graph(data, self.board),
                    "throughput": charts.throughput(data), "failures": charts.failures(data),
                    "llm": charts.llm_usage(self.calls, data.campaign.created_at),
                    "operators": charts.operator_success(operator_stats(data)),
                }
                for key, stats, arm in (("instructions", instruction_stats(data), "instruction"),
                                        ("models", model_stats(data), "LLM model")):
                    if stats:
                        drawn[key] = charts.operator_success(stats, arm)
                self._charts = {"stamp": self.stamp, **drawn}
            return self._charts

    def candidate(self, candidate_id: int) -> dict[str, Any] | None:
        data = self.data if candidate_id in self.data.candidates else self._with_candidate(candidate_id)
        candidate = data.candidates.get(candidate_id)
        if candidate is None:
            return None
        report = candidate_report(data, candidate, self.board).to_dict()
        parents = [(edge, data.candidates[edge.parent_id]) for edge in data.parents.get(candidate.id, ())
                   if edge.parent_id in data.candidates]
        report["diffs"] = [{"parent": parent.id, "relation": edge.relation, "name": parent.name,
                            "diff": source_diff(parent.source, candidate.source, f"#{parent.id}", f"#{candidate.id}")}
                           for edge, parent in parents]
        fingerprint = data.fingerprint(candidate.id)
        report["fingerprint_svg"] = charts.fingerprint_heatmaps(fingerprint) if fingerprint else None
        return report

    def _with_candidate(self, candidate_id: int) -> CampaignData:
        """The sample with one candidate outside it added, with its parents and children (a sampled
        campaign's node or row that the sample left out)."""
        data, store = self.data, self.data.store
        if store is None:
            return data
        relatives = [edge.parent_id for edge in store.parents_of([candidate_id])] + [
            edge.child_id for edge in store.children(candidate_id)]
        part = load_campaign_part(store, data.campaign, [candidate_id, *relatives])
        if candidate_id not in part.candidates:  # another campaign's id
            return data
        children = {**data.children, **part.children}
        return replace(data, candidates={**data.candidates, **part.candidates},
                       parents={**data.parents, **part.parents}, children=children,
                       evaluations={**data.evaluations, **part.evaluations})


def source_diff(before: str, after: str, before_name: str, after_name: str) -> str:
    """A unified diff of two loss modules (plain text: the page shows it as text)."""
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        before_name, after_name))


class Dashboard:
    """One campaign of one store, read as snapshots keyed by the store's change stamp."""

    def __init__(self, store: Store, campaign: Campaign) -> None:
        self.store = store
        self.campaign = campaign
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()

    def stamp(self) -> str:
        return self.store.change_stamp(self.campaign.id)

    def snapshot(self) -> Snapshot:
        """The campaign now; reloaded only when the stamp has moved (one reload at a time)."""
        with self._lock:
            stamp = self.stamp()
            if self._snapshot is None or self._snapshot.stamp != stamp:
                campaign = self.store.get_campaign_by_id(self.campaign.id)
                self._snapshot = Snapshot(stamp, report_inputs(self.store, campaign),
                                          self.store.evaluation_totals(campaign.id),
                                          self.store.llm_calls(campaign.id), self.store.notes(campaign.id))
            return self._snapshot


def create_app(store: Store, campaign: Campaign) -> Starlette:
    """The dashboard's ASGI application over `campaign` in `store`."""
    dashboard = Dashboard(store, campaign)
    static = resources.files("lossearch.reporting") / "static"

    def page(_: Request) -> Response:
        return Response((static / "dashboard.html").read_text(encoding="utf-8"), media_type="text/html")

    def stamp(_: Request) -> Response:
        return JSONResponse({"stamp": dashboard.stamp()})

    def state(_: Request) -> Response:
        return JSONResponse(dashboard.snapshot().state())

    def charts_route(_: Request) -> Response:
        return JSONResponse(dashboard.snapshot().charts())

    def candidate(request: Request) -> Response:
        found = dashboard.snapshot().candidate(request.path_params["candidate_id"])
        if found is None:
            return JSONResponse({"error": "no such candidate in this campaign"}, status_code=404)
        return JSONResponse(found)

    app = Starlette(routes=[
        Route("/", page), Route("/api/stamp", stamp), Route("/api/state", state),
        Route("/api/charts", charts_route), Route("/api/candidate/{candidate_id:int}", candidate),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ])
    app.add_middleware(SecurityHeaders)
    return app


class SecurityHeaders:
    """ASGI middleware: `SECURITY_HEADERS` on every response, the static files' included."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


def serve(store: Store, campaign: Campaign, *, host: str, port: int) -> None:
    """Serve the dashboard until interrupted (Ctrl-C)."""
    import uvicorn

    threading.Thread(target=_warm_up, daemon=True).start()
    uvicorn.run(create_app(store, campaign), host=host, port=port, log_level="warning", access_log=False)


def _warm_up() -> None:
    # a candidate's page summarizes its fingerprint, which imports torch (seconds): pay it before the first click
    import lossearch.fingerprint  # noqa: F401
