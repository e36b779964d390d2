"""The kill -9 soak, short: training killed with SIGKILL 4 times (twice the instant a checkpoint
write starts) resumes to the same final weights as a straight run, losing at most one
checkpoint interval a kill; the server killed under load restarts with the same answers and
its model folder unchanged. ``python scripts/soak.py`` is the long version (20 kills)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kill_minus_nine_soak(tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--kills", "4", "--server-kills", "1",
                          "--seed", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert out.is_file(), run.stderr[-3000:]
    result = json.loads(out.read_text())
    training, server = result["training"], result["server"]
    assert training["restart_failures"] == [] and training["final_weights_identical"], result
    assert training["kills"] + training["finished_before_the_kill"] == 4
    assert training["kills"] >= 3  # the kills land inside the run, not after it
    assert training["most_steps_lost"] <= training["save_every"]
    assert server["start_failures"] == [] and server["restarts_ready"] == 2
    assert server["same_answer_after_every_restart"] and server["model_folder_unchanged"]
    assert server["requests_served"] > 0
    assert run.returncode == 0, run.stdout[-2000:]
