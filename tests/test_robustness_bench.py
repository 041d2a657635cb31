"""The audit's target on the robustness benchmark's own configuration (bench/robustness.py):
digits over 100 sites (Dirichlet 0.5), 20% of them colluding attackers, 30 rounds of 10,
no defence but the audit. It flags at least 90% of the attackers it saw under sign
flipping and scaling, and under 5% of the honest sites. One seed here (a few seconds
each); the benchmark itself takes the median of three."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import robustness  # noqa: E402  (bench/robustness.py)


@pytest.mark.parametrize("attack", ["sign_flip", "scaling"])
def test_the_audit_flags_the_attackers_and_spares_the_honest(attack: str) -> None:
    doc = robustness.job(
        robustness.ATTACKS[attack],
        robustness.DEFENCES["mean"],
        0,
        sites=100,
        rounds=30,
        per_round=10,
        workers=2,
    )
    figures = robustness.run_one(doc, debug=False)
    assert figures["flagged_malicious"] >= 0.9, figures
    assert figures["flagged_honest"] < 0.05, figures


def test_the_benchmark_runs_its_tiny_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    robustness.main(["--tiny", "--debug"])
    out = capsys.readouterr().out
    assert "sign_flip x median" in out and "median final accuracy" in out
