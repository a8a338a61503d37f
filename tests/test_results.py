"""After a campaign: campaigns, leaderboard, show, lineage, transfer, export, report, and the
confirmation stage's verdicts on every one of them.

One small real campaign is built per module (about 15 s); every command runs through
the real CLI in a subprocess, from the campaign's directory, and through the library.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from helpers import run_cli

from lossearch.cli import main
from lossearch.contract import TENSOR_INPUTS, call_loss, load_loss, parse_spec
from lossearch.ranking import load_campaign_data, operator_stats
from lossearch.reporting import results as results_module
from lossearch.reporting.export import module_source
from lossearch.reporting.results import NoResults, build_leaderboard, leaderboard, verdict_of
from lossearch.reporting.views import as_text, confirmation_view
from lossearch.search import transfer as transfer_module
from lossearch.search.config import CampaignConfig
from lossearch.search.seeds import seed_paths
from lossearch.store import NotFoundError, Store
from lossearch.store.locate import open_campaign


def lossearch(*args: str, cwd) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, timeout=180)


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def in_process(monkeypatch, capfd):
    """`main(args)` in this process, from `cwd`: the same code path as the console script, without its start-up."""
    def call(*args: str, cwd) -> Done:
        monkeypatch.chdir(cwd)
        code = main(list(args))
        out, err = capfd.readouterr()
        return Done(code, out, err)
    return call


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def one_line_error(done: subprocess.CompletedProcess, code: int | tuple[int, ...] = (1, 2)) -> str:
    assert done.returncode in ((code,) if isinstance(code, int) else code), (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.strip().count("\n") == 0, done.stderr
    return done.stderr


@pytest.fixture(scope="module")
def home(tmp_path_factory, seeded_campaign):
    """A directory holding runs/t/campaign.db: the seed library and one generation of 3 children (a copy of
    the session's, so this module's writes stay here)."""
    home = tmp_path_factory.mktemp("home")
    shutil.copytree(seeded_campaign, home / "runs")
    return home


@pytest.fixture(scope="module")
def data(home):
    with open_campaign(runs_dir=home / "runs") as handle:
        return load_campaign_data(handle.store, handle.campaign)


def child_of(data) -> int:
    """A ranked child of generation 1 (it has parents)."""
    board = build_leaderboard(data)
    return next(row.id for row in board.rows if row.generation == 1 and row.parents)


# -- library ---------------------------------------------------------------------------------


def test_leaderboard_ranks_marks_seeds_and_shows_verdicts(data):
    board = build_leaderboard(data)
    assert [row.rank for row in board.rows] == list(range(1, len(board.rows) + 1))
    assert len(board.rows) >= len(seed_paths()) and board.task == "sentiment"
    fitnesses = [row.fitness for row in board.rows]
    assert fitnesses == sorted(fitnesses, reverse=True)  # one tier here: plain fitness order
    assert sum(row.is_seed for row in board.rows) == len(seed_paths())
    (dpo,) = [row for row in board.rows if row.is_baseline]
    assert dpo.name == "dpo" and dpo.is_seed and dpo.verdict == "baseline"
    for row in board.rows:
        # no confirmation stage ran: no claim against DPO anywhere, only the raw difference
        assert row.verdict == ("baseline" if row.is_baseline else "seed" if row.is_seed else "unconfirmed")
        assert row.verdict == verdict_of(data, data.candidates[row.id]) and row.confirmation is None
        assert row.dpo_delta == pytest.approx(row.fitness - dpo.fitness)
    assert build_leaderboard(data, top=3).rows == board.rows[:3]
    everyone = build_leaderboard(data, include_failed=True).rows
    assert len(everyone) == len(data.candidates)


def test_the_most_recently_active_campaign_is_the_default(home, tmp_path):
    with open_campaign(runs_dir=home / "runs") as handle:
        assert handle.campaign.name == "t" and handle.location.endswith("campaign.db")
    with pytest.raises(NotFoundError, match="no campaign found"):
        with open_campaign(runs_dir=tmp_path / "runs"):
            pass
    with pytest.raises(NotFoundError, match="does not exist"):
        with open_campaign("nope", runs_dir=home / "runs"):
            pass


def test_an_empty_campaign_has_no_leaderboard(tmp_path):
    with Store.for_campaign_dir(tmp_path / "runs" / "empty") as store:
        store.create_campaign("empty", {"task": "sentiment"})
    with open_campaign(runs_dir=tmp_path / "runs") as handle, pytest.raises(NoResults, match="no candidates yet"):
        leaderboard(handle)


def random_inputs(batch: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tensors = {name: -torch.rand(batch, generator=generator, dtype=torch.float64) * 30 for name in TENSOR_INPUTS}
    for name in ("chosen_lengths", "rejected_lengths"):
        tensors[name] = torch.randint(1, 40, (batch,), generator=generator).double()
    for name in ("chosen_kl", "rejected_kl"):
        tensors[name] = torch.rand(batch, generator=generator, dtype=torch.float64) * 3
    for side in ("chosen", "rejected"):  # (B, 40) token inputs, drawn last so the others keep their values
        mask = (torch.arange(40)[None, :] < tensors[f"{side}_lengths"][:, None]).double()
        tensors[f"{side}_mask"] = mask
        for model in ("policy", "reference"):
            draw = torch.rand(batch, 40, generator=generator, dtype=torch.float64)
            tensors[f"{model}_{side}_token_logps"] = -draw * mask
    return tensors


def exactly_equal(first_source: str, second_source: str) -> None:
    first, second = parse_spec(first_source), parse_spec(second_source)
    assert (first.inputs, dict(first.hyperparameters)) == (second.inputs, dict(second.hyperparameters))
    tensors = random_inputs()
    for beta in (None, 0.5):
        a = call_loss(load_loss(first_source), first, tensors, beta=beta)
        b = call_loss(load_loss(second_source), second, tensors, beta=beta)
        assert torch.equal(a, b)


def test_every_exported_loss_gives_exactly_the_stored_values(data):
    for candidate in data.candidates.values():
        if candidate.status != "rejected":
            exactly_equal(candidate.source, module_source(data, candidate))


def test_export_keeps_future_imports_and_odd_docstrings(tmp_path):
    source = r'''"""A loss with \\ backslashes, an escaped \"\"\" triple quote and a trailing quote \""""
from __future__ import annotations
import torch.nn.functional as F

def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.2, gamma: float = 0.5):
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps) - gamma)
'''
    with Store.for_campaign_dir(tmp_path / "runs" / "odd") as store:
        campaign = store.create_campaign("odd", {"task": "sentiment"})
        candidate = store.add_candidate(campaign.id, source=source, name="odd loss!", proposer="llm", generation=1)
        exported = module_source(load_campaign_data(store, campaign), candidate)
    tree = ast.parse(exported)
    docstring = ast.get_docstring(tree)
    assert '\\ backslashes, an escaped """ triple quote and a trailing quote "' in docstring
    assert f"#{candidate.id}" in docstring
    assert isinstance(tree.body[1], ast.ImportFrom) and tree.body[1].module == "__future__"
    exactly_equal(source, exported)


# -- the CLI, as a user runs it ----------------------------------------------------------------


def test_campaigns_lists_the_campaign(home):
    listed = json.loads(ok(lossearch("campaigns", "--json", cwd=home)))
    assert [entry["name"] for entry in listed] == ["t"]
    assert listed[0]["location"] == "runs/t/campaign.db" and listed[0]["candidates"] == len(seed_paths()) + 3
    assert "t *" in ok(lossearch("campaigns", cwd=home))


def test_leaderboard_in_every_format(home, tmp_path):
    rows = json.loads(ok(lossearch("leaderboard", "--format", "json", "--top", "5", cwd=home)))
    assert len(rows) == 5 and [row["rank"] for row in rows] == [1, 2, 3, 4, 5]
    for row in rows:
        assert set(row) >= {"id", "name", "fitness", "reward", "kl", "pref_acc", "parents", "generation", "is_seed",
                            "verdict", "confirmation", "dpo_delta", "fitness_std", "tier", "proposer"}
        assert "beats_dpo" not in row
    table = ok(lossearch("leaderboard", "--run", "t", cwd=home))
    assert "verdict" in table and "beats DPO" not in table and "dpo (seed)" in table and "baseline" in table
    markdown = ok(lossearch("leaderboard", "--format", "markdown", "--include-failed", cwd=home))
    assert markdown.count("\n| ") >= len(seed_paths()) + 3
    assert "| verdict |" in markdown and "Holm correction" in markdown
    page = tmp_path / "board.html"
    ok(lossearch("leaderboard", "--format", "html", "--out", str(page), cwd=home))
    assert "<table>" in page.read_text() and "dpo" in page.read_text()


def test_show_prints_code_idea_metrics_and_relatives(home, data):
    child = child_of(data)
    shown = json.loads(ok(lossearch("show", str(child), "--json", cwd=home)))
    assert shown["id"] == child and "def loss" in shown["source"] and shown["idea"]
    assert shown["is_seed"] is False and shown["parents"] and shown["fingerprint_summary"]["text"]
    assert {(e["tier"], e["task"]) for e in shown["evaluations"]} >= {("bandit", "sentiment")}
    parent = shown["parents"][0]
    assert parent["delta"] == pytest.approx(shown["score"]["fitness"] - parent["fitness"])
    text = ok(lossearch("show", f"#{child}", cwd=home))
    assert "def loss" in text and "idea:" in text and "fingerprint:" in text and "parents" in text
    # its operator's record in the campaign, as operator_stats counts it
    record = operator_stats(data)[data.candidates[child].model]
    assert shown["operator"]["operator"] == record.operator and shown["operator"]["children"] == record.children
    assert f"operator {record.operator} in this campaign: {record.children} children" in text
    first_parent = json.loads(ok(lossearch("show", data.candidates[parent["id"]].name, "--json", cwd=home)))
    assert first_parent["is_seed"] and any(relative["id"] == child for relative in first_parent["children"])


def test_show_read_through_the_store_equals_show_on_the_whole_snapshot(home):
    """show_candidate loads the candidate and its relatives alone and counts its place and its operator's
    record in the store: for every candidate of the campaign, what the whole snapshot says."""
    from lossearch.reporting.results import candidate_report, show_candidate

    with open_campaign(runs_dir=home / "runs") as handle:
        data = load_campaign_data(handle.store, handle.campaign)  # as it is now: earlier tests write to it
        board = build_leaderboard(data)
        for candidate in data.candidates.values():
            expected = candidate_report(data, candidate, board).to_dict()
            assert show_candidate(handle, candidate.id).to_dict() == expected, candidate.name
        assert show_candidate(handle, "dpo").to_dict()["name"] == "dpo"


def test_lineage_read_through_the_store_equals_lineage_on_the_whole_snapshot(home):
    """lineage() walks the edges in the store and loads only the candidates it reaches: the tree the whole
    snapshot draws, for every candidate."""
    from lossearch.reporting.results import Lineage, _branches, _node, lineage

    with open_campaign(runs_dir=home / "runs") as handle:
        data = load_campaign_data(handle.store, handle.campaign)  # as it is now: earlier tests write to it
        for candidate in data.candidates.values():
            up = _branches(data, candidate.id, upward=True, seen={candidate.id})
            down = _branches(data, candidate.id, upward=False, seen={candidate.id})
            expected = Lineage(data.campaign.name, _node(data, candidate.id), up, down)
            assert lineage(handle, candidate.id) == expected, candidate.name


def test_lineage_draws_ancestry_with_fitness_changes(home, data):
    child = child_of(data)
    tree = json.loads(ok(lossearch("lineage", str(child), "--json", cwd=home)))
    assert tree["root"]["id"] == child and tree["ancestors"]
    for node in tree["ancestors"]:
        parent = data.candidates[node["id"]]
        assert node["relation"] in ("mutation", "crossover") and parent.generation == 0
        assert node["delta"] == pytest.approx(tree["root"]["fitness"] - node["fitness"])
    text = ok(lossearch("lineage", str(child), cwd=home))
    assert "ancestry" in text and "Δ" in text and data.candidates[tree["ancestors"][0]["id"]].name in text


def test_transfer_evaluates_stores_and_reuses(home):
    first = json.loads(ok(lossearch("transfer", "--top", "1", "--tasks", "sort", "--json", cwd=home)))
    assert first["tier"] == "bandit" and first["tasks"] == ["sort"] and first["ran"] == 2  # the leader and DPO
    assert "rule" not in first
    (dpo,) = [row for row in first["rows"] if row["is_baseline"]]
    for row in first["rows"]:
        cell = row["cells"]["sort"]
        assert cell["fitness"] is not None and "wins" not in row and "beats_dpo" not in cell
        expected = None if row["is_baseline"] else cell["fitness"] - dpo["cells"]["sort"]["fitness"]
        assert cell["dpo_delta"] == pytest.approx(expected)
    with Store(f"sqlite:///{home / 'runs' / 't' / 'campaign.db'}") as store:
        stored = store.evaluations(task="sort", tier="bandit")
        assert {e.candidate_id for e in stored} == {row["id"] for row in first["rows"]}
    again = " ".join(ok(lossearch("transfer", "--top", "1", "--tasks", "sort", cwd=home)).split())
    assert "held out on sort" in again and "0 evaluation(s) run now" in again
    assert "Δ DPO" in again and "beats DPO" not in again
    on_sort = json.loads(ok(lossearch("leaderboard", "--task", "sort", "--format", "json", cwd=home)))
    assert len(on_sort) == 2
    one_line_error(lossearch("transfer", "--tasks", "sentiment", cwd=home), 2)


def test_export_writes_standalone_modules(home, data, tmp_path):
    child = child_of(data)
    printed = ok(lossearch("export", str(child), cwd=home))
    exactly_equal(data.candidates[child].source, printed)
    folder = tmp_path / "board"
    ok(lossearch("export", "--top", "2", "--out-dir", str(folder), cwd=home))
    modules = sorted(folder.glob("rank*.py"))
    assert [path.name[:6] for path in modules] == ["rank01", "rank02"] and (folder / "README.md").is_file()
    for path in modules:
        imported = {alias.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module for node in ast.parse(path.read_text()).body if isinstance(node, ast.ImportFrom)}
        assert imported <= {"torch", "torch.nn.functional", "math", "__future__"}
    # imports and runs with torch alone: TRL, transformers and lossearch are made unimportable
    probe = ("import sys, importlib.util, torch\n"
             "for name in ('trl', 'transformers', 'lossearch', 'numpy'): sys.modules[name] = None\n"
             f"spec = importlib.util.spec_from_file_location('exported', {str(modules[0])!r})\n"
             "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
             "x = torch.zeros(4)\n"
             "print(module.TUNED_BETA, callable(module.dpo_trainer_class), callable(module.use_in_dpo_trainer),\n"
             "      isinstance(module.TUNED_HYPERPARAMETERS, dict))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split()[1:] == ["True"] * 3, done.stderr


def test_export_read_through_the_store_equals_export_on_the_whole_snapshot(home, tmp_path):
    """export reads the candidates, their parents and DPO alone (and the leaders through the kept scores):
    the modules the whole snapshot writes, for every candidate and for the top five."""
    from lossearch.reporting.export import export_candidate, export_top, module_name, module_source

    with open_campaign(runs_dir=home / "runs") as handle:
        data = load_campaign_data(handle.store, handle.campaign)  # as it is now: earlier tests write to it
        board = build_leaderboard(data, top=5)
        for candidate in data.candidates.values():
            assert export_candidate(handle, candidate.id).source == module_source(data, candidate), candidate.name
        written = export_top(handle, 5, tmp_path / "top")
    assert [(m.candidate_id, m.name, m.source) for m in written] == [
        (row.id, module_name(data.candidates[row.id], row.rank), module_source(data, data.candidates[row.id]))
        for row in board.rows]


def test_an_exported_module_is_itself_a_candidate(home, data, tmp_path):
    """`lossearch eval` takes what `export` writes: the same loss, fingerprint for fingerprint."""
    child = child_of(data)
    module = tmp_path / "exported.py"
    ok(lossearch("export", str(child), "--out", str(module), cwd=home))
    evaluated = json.loads(ok(lossearch("eval", str(module), "--tier", "sanity", "--json", cwd=tmp_path)))
    assert evaluated["status"] == "ok"
    assert evaluated["metrics"]["sanity"]["fingerprint"] == pytest.approx(list(data.fingerprint(child) or ()))


def test_report_is_one_self_contained_html_file(home, data):
    out = ok(lossearch("report", cwd=home))
    path = home / "runs" / "t" / "report.html"
    assert str(path.relative_to(home)) in out
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") >= 5
    for heading in ("Fitness", "Best fitness over time", "Reward against KL", "Lineage", "Fingerprints",
                    "Leaderboard", "Mutation operators", "Evaluations finished", "Failures"):
        assert heading in html
    for name, record in operator_stats(data).items():
        assert f'<tr><td>{name}</td><td class="n">{record.children}</td>' in html
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert "Held-out tasks" in html or "sort" not in html  # present once transfer has stored something


def test_errors_are_one_line(home, tmp_path, in_process):
    one_line_error(lossearch("show", "99999", cwd=home), 2)  # once through the console script
    one_line_error(in_process("lineage", "no-such-loss", cwd=home), 2)
    one_line_error(in_process("export", "99999", cwd=home), 2)
    one_line_error(in_process("export", cwd=home), 2)
    one_line_error(in_process("export", "1", "--top", "2", cwd=home), 2)
    one_line_error(in_process("leaderboard", "--run", "missing", cwd=home), 2)
    one_line_error(in_process("leaderboard", "--task", "sorting", cwd=home), 2)
    one_line_error(in_process("leaderboard", cwd=tmp_path), 2)  # no campaign here at all
    one_line_error(in_process("campaigns", cwd=tmp_path), 1)
    with Store.for_campaign_dir(tmp_path / "runs" / "empty") as store:
        store.create_campaign("empty", {"task": "sentiment"})
    one_line_error(lossearch("leaderboard", cwd=tmp_path), 1)
    for command in (["report"], ["transfer"], ["export", "--top", "1"], ["show", "1"]):
        one_line_error(in_process(*command, cwd=tmp_path), (1, 2))
    assert json.loads(in_process("campaigns", "--json", cwd=tmp_path).stdout)[0]["candidates"] == 0


def test_transfer_uses_the_campaigns_top_tier(monkeypatch):
    from lossearch.evaluation.finetune.config import FinetuneOptions

    assert results_module.transfer_tier({"finetune": False}) == "bandit"
    assert results_module.transfer_tier({"finetune": True}) == "finetune"
    seen = {}

    def fake_finetune_tier(sandbox, spec, task, seed, options):
        seen.update(task=task, seed=seed, options=options)
        return {"fitness": 0.5}

    monkeypatch.setattr(transfer_module, "finetune_tier", fake_finetune_tier)
    config = CampaignConfig(finetune=True, budget="standard", seed=3)
    evaluated = transfer_module.evaluate_on_task(None, None, "sort", "finetune", config, "sqlite:///x.db")
    assert evaluated == {"fitness": 0.5}
    assert seen == {"task": "sort", "seed": 3, "options": FinetuneOptions(budget="standard", storage="sqlite:///x.db")}


# -- the confirmation stage's verdicts, on every surface -----------------------------------------

HOSTILE = "<script>alert(1)</script>"


def confirmation_report(candidate: str, candidate_id: int, dpo_id: int, *, confirmed: bool, verdict: str,
                        baseline: str = "dpo"):
    """What `lossearch.search.confirm` would conclude about one leader, without training anything."""
    from lossearch.search.confirm import Comparison, ConfirmationReport, LeaderVerdict

    seeds = (1_000_000, 1_000_001, 1_000_002)
    comparison = Comparison(candidate, candidate_id, baseline, dpo_id, "sentiment", verdict, 0.012, (0.004, 0.020),
                            0.004, 0.008, 0.9, "paired t", seeds, (0.50, 0.51, 0.52), (0.49, 0.50, 0.50), 0.0, 1 / 3,
                            (0.1,), (0.1,))
    return ConfirmationReport("sentiment", ("sentiment",), seeds, "quick", "fp32",
                              (LeaderVerdict(candidate, candidate_id, confirmed, (comparison,)),), ran=6)


@pytest.fixture
def judged(home, data, tmp_path):
    """A copy of the campaign where one child is a confirmed discovery and another was not confirmed (its
    record naming a baseline that holds HTML); the folder, and the two ids."""
    from lossearch.search.confirm import confirmation_record

    shutil.copytree(home / "runs", tmp_path / "runs")
    confirmed = child_of(data)
    ranked = [row.id for row in build_leaderboard(data).rows if not row.is_seed and row.id != confirmed]
    other = (ranked or [c.id for c in data.candidates.values() if c.proposer != "seed" and c.id != confirmed])[0]
    dpo = data.baseline.id
    with open_campaign(runs_dir=tmp_path / "runs") as handle:
        for candidate_id, is_confirmed, verdict, baseline in ((confirmed, True, "better", "dpo"),
                                                              (other, False, "no detectable difference", HOSTILE)):
            report = confirmation_report(data.candidates[candidate_id].name, candidate_id, dpo,
                                         confirmed=is_confirmed, verdict=verdict, baseline=baseline)
            handle.store.record_confirmation(handle.campaign.id, candidate_id, confirmed=is_confirmed,
                                             record=confirmation_record(report, report.leaders[0]))
    return tmp_path, confirmed, other


def provenance_verdict(module: str) -> str:
    (line,) = [line for line in ast.get_docstring(ast.parse(module)).splitlines() if line.startswith("verdict:")]
    return line


def test_a_never_confirmed_child_is_unconfirmed_everywhere(home, data, tmp_path, in_process):
    child = child_of(data)
    rows = json.loads(in_process("leaderboard", "--format", "json", cwd=home).stdout)
    assert {row["verdict"] for row in rows if not row["is_seed"]} == {"unconfirmed"}
    shown = json.loads(in_process("show", str(child), "--json", cwd=home).stdout)
    assert shown["verdict"] == "unconfirmed" and shown["confirmation"] is None and "beats_dpo" not in shown
    assert "verdict: unconfirmed" in " ".join(in_process("show", str(child), cwd=home).stdout.split())
    page = tmp_path / "report.html"
    assert in_process("report", "--out", str(page), cwd=home).returncode == 0
    html = page.read_text()
    assert "<td class=\"muted\">unconfirmed</td>" in html and "No leader has been confirmed yet" in html
    assert "beats DPO" not in html
    exported = in_process("export", str(child), cwd=home).stdout
    assert provenance_verdict(exported) == ("verdict:    unconfirmed (not compared with DPO on fresh seeds; "
                                            "run `lossearch confirm`)")
    assert json.loads(in_process("campaigns", "--json", cwd=home).stdout)[0]["confirmed"] == 0


def test_a_confirmation_record_shows_on_every_surface(judged, in_process):
    folder, confirmed, other = judged
    rows = {row["id"]: row for row in
            json.loads(in_process("leaderboard", "--format", "json", "--include-failed", cwd=folder).stdout)}
    assert rows[confirmed]["verdict"] == "confirmed"
    assert rows[confirmed]["confirmation"].startswith("confirmed discovery: better than dpo on sentiment, +0.012")
    assert rows[other]["verdict"] == "not confirmed"
    assert {row["verdict"] for key, row in rows.items() if key not in (confirmed, other)} <= {
        "unconfirmed", "seed", "baseline"}

    shown = json.loads(in_process("show", str(confirmed), "--json", cwd=folder).stdout)
    assert shown["verdict"] == "confirmed" and shown["confirmation"]["seeds"] == [1_000_000, 1_000_001, 1_000_002]
    (comparison,) = shown["confirmation"]["comparisons"]
    assert comparison["verdict"] == "better" and comparison["p_adjusted"] == pytest.approx(0.008)
    text = " ".join(in_process("show", str(confirmed), cwd=folder).stdout.split())
    assert "verdict: confirmed" in text and "confirmed discovery: better than dpo" in text
    assert "+0.012" in text and "[+0.004, +0.020]" in text and "0% / 33%" in text  # the comparisons table

    page = folder / "report.html"
    assert in_process("report", "--out", str(page), cwd=folder).returncode == 0
    html = page.read_text()
    assert '<td class="yes">confirmed</td>' in html  # the leaderboard's verdict column
    assert "<h2>Confirmation</h2>" in html and '<span class="no">not confirmed</span>' in html
    assert "no detectable difference" in html and "[+0.004, +0.020]" in html
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # names are untrusted text

    assert provenance_verdict(in_process("export", str(confirmed), cwd=folder).stdout).startswith(
        "verdict:    confirmed discovery: better than dpo on sentiment, +0.012 (95% CI +0.004 to +0.020")
    assert provenance_verdict(in_process("export", str(other), cwd=folder).stdout).startswith(
        f"verdict:    not confirmed: no detectable difference from {HOSTILE} on sentiment, +0.012")
    assert json.loads(in_process("campaigns", "--json", cwd=folder).stdout)[0]["confirmed"] == 1


def test_the_confirmation_view_fits_a_narrow_console():
    report = confirmation_report("a-rather-long-candidate-name-from-an-llm", 7, 1, confirmed=False,
                                 verdict="no detectable difference")
    narrow = as_text(confirmation_view(report, 80), width=80)
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert "no detectable" in narrow and "[+0.004, +0.020]" in narrow and "1000000..1000002" in narrow
    assert "not confirmed: no detectable difference from dpo" in " ".join(narrow.split())
    wide = as_text(confirmation_view(report, 160), width=160)
    assert "paired t" in wide and "0% / 33%" in wide and "paired t" not in narrow
