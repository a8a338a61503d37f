"""Executors: N local workers, and sandboxes on a real local Ray instance."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lossearch.search.campaign import run_campaign
from lossearch.search.config import CampaignConfig
from lossearch.sandbox.local import SandboxLimits
from lossearch.search.seeds import seed_path
from lossearch.store import Store

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_ray_sandbox_runs_the_same_jail(local_ray):
    from lossearch.sandbox.ray_sandbox import RaySandbox

    with RaySandbox(SandboxLimits(wall_seconds=3, cpu_seconds=3)) as sandbox:
        good = sandbox.run("sanity", {"source": seed_path("dpo").read_text(), "name": "dpo"})
        assert good.ok and len(good.value["fingerprint"]) > 0
        assert good.isolation["audit_hook"] is True
        looping = sandbox.run("sanity", {"source": "def loss(policy_chosen_logps):\n    while True:\n        pass\n"})
        assert looping.failure.kind == "timeout"
        again = sandbox.run("sanity", {"source": seed_path("ipo").read_text(), "name": "ipo"})
        assert again.ok


@pytest.mark.slow
def test_a_campaign_on_the_ray_executor(local_ray, tmp_path):
    requested = {"name": "onray", "generations": 1, "population": 2, "finetune": False, "workers": 2,
                 "executor": "ray"}
    outcome = run_campaign(CampaignConfig(**requested), runs_dir=tmp_path / "runs")
    assert outcome.stop_reason == "reached 1 generation(s)"
    with Store.for_campaign_dir(tmp_path / "runs" / "onray") as store:
        campaign = store.get_campaign("onray")
        assert not store.pending_candidates(campaign.id)
        assert sum(1 for c in store.candidates(campaign.id) if c.status == "evaluated") >= 24


def test_without_ray_the_executor_says_how_to_install_it(tmp_path):
    script = ("import sys; sys.modules['ray'] = None; from lossearch.cli import main; "
              "sys.exit(main(['run', '--name', 'x', '--executor', 'ray', '--no-finetune']))")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == 'error: the ray executor needs Ray: pip install "lossearch[ray]"'
