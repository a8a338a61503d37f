"""The `lossearch` console script, run as a user runs it: a real process, from another directory."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import run_cli

from lossearch.cli import app
from lossearch.contract import TOKEN_INPUTS
from lossearch.evaluation.cascade import evaluate
from lossearch.search.seeds import seed_path, seed_paths

SEED_NAMES = ("alpha_dpo alpha_po aot aot_unpaired apo_down apo_zero bco_pair beta_dpo cal_dpo cdpo chi_po cpo "
              "discopop dpo dpo_shift dpo_shift_linear dpop dr_dpo exo_pair fdpo_alpha fdpo_forward_kl fdpo_js "
              "gpo_exponential gpo_savage gpo_truncated_quadratic h_dpo hinge ipo kto_pair ld_dpo minor_dpo nca_pair "
              "odpo orpo rdpo robust rpo sampo sft sigmoid_norm simper simpo slic sppo_hard tdpo tdpo1 wpo").split()


def lossearch(*args: str, cwd) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, timeout=120)


def test_seeds_json_lists_the_library_from_any_directory(tmp_path):
    done = lossearch("seeds", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seeds = json.loads(done.stdout)
    assert sorted(seed["name"] for seed in seeds) == sorted(SEED_NAMES)
    for seed in seeds:
        assert set(seed) >= {"name", "path", "summary", "hyperparameters", "inputs"}
        assert seed["summary"] and "beta" in seed["hyperparameters"]
    inputs = {seed["name"]: set(seed["inputs"]) for seed in seeds}  # the wider contract's, listed too
    assert {"chosen_scores", "rejected_scores"} <= inputs["odpo"]
    assert {"running_margin_mean", "running_margin_std"} <= inputs["beta_dpo"]
    assert "progress" in inputs["dpo_shift_linear"]
    assert set(TOKEN_INPUTS) <= inputs["ld_dpo"] and set(TOKEN_INPUTS) <= inputs["sampo"]


def test_eval_json_reports_every_metric(tmp_path):
    done = lossearch("eval", str(seed_path("dpo")), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "ok" and result["tier"] == "bandit" and result["error"] is None
    bandit = result["metrics"]["bandit"]
    assert set(bandit) >= {"reward", "reference_reward", "kl", "pref_acc", "fitness", "beta"}
    assert bandit["reward"] > bandit["reference_reward"]


def test_eval_of_a_broken_loss_exits_1_with_its_kind(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import os\ndef loss(policy_chosen_logps):\n    return os.system('true')\n")
    done = lossearch("eval", str(broken), "--tier", "sanity", "--json", cwd=tmp_path)
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["status"] == "rejected" and result["tier"] == "static"
    assert result["error"]["kind"] == "policy"


def test_eval_of_a_failing_loss_reports_the_sanity_tier(tmp_path):
    constant = tmp_path / "constant.py"
    constant.write_text("def loss(policy_chosen_logps):\n    return policy_chosen_logps.detach() * 0\n")
    done = lossearch("eval", str(constant), "--json", cwd=tmp_path)
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert (result["status"], result["tier"], result["error"]["kind"]) == ("failed", "sanity", "no_grad")


@pytest.mark.parametrize("args", [("eval", "missing.py"), ("eval", "x.py", "--tier", "nope"), ("eval",),
                                  ("compare", "a.py"), ("nope",)])
def test_usage_errors_are_one_line_and_exit_2(tmp_path, args):
    done = lossearch(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr


def test_a_bad_choice_names_the_choices(tmp_path):
    done = lossearch("eval", "x.py", "--task", "nope", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: Invalid value for '--task': 'nope' is not one of 'sentiment'")


def test_the_command_line_starts_without_torch_openai_or_sqlalchemy():
    """Each costs a large part of a second to import; a command imports what it uses, when it does."""
    import sys

    script = ("import sys, lossearch.__main__, lossearch.cli; "
              "print(sorted(m for m in ('torch', 'openai', 'sqlalchemy', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_compare_prints_the_verdict(tmp_path):
    done = lossearch("compare", str(seed_path("dpo")), str(seed_path("ipo")), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "different" in done.stdout


def test_every_command_is_documented_with_an_example():
    for command in app.registered_commands:
        doc = command.callback.__doc__ or ""
        assert doc.strip(), f"{command.name} has no help text"
        assert "Example: lossearch " in doc, f"{command.name} has no example"


@pytest.mark.parametrize("path", seed_paths(), ids=lambda path: path.stem)
def test_every_seed_passes_the_cascade(sandbox, path):
    evaluation = evaluate(path.read_text(), path.stem, "bandit", sandbox=sandbox)
    assert evaluation.ok, evaluation.error
