"""``consortia privacy epsilon|calibrate`` through the real entry point."""

from __future__ import annotations

import json

import pytest

from consortia.cli import main
from consortia.privacy.accountant import calibrate, epsilon_for


def test_epsilon_json_matches_library(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "privacy",
            "epsilon",
            "--noise",
            "1.1",
            "--rate",
            "0.01",
            "--rounds",
            "500",
            "--delta",
            "1e-5",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert set(out) == {"epsilon_rdp", "epsilon_pld"}
    expected = epsilon_for(1.1, 0.01, 500, 1e-5)
    assert out["epsilon_rdp"] == pytest.approx(expected["rdp"])
    assert out["epsilon_pld"] == pytest.approx(expected["pld"])
    assert 0 < out["epsilon_pld"] < out["epsilon_rdp"]


def test_epsilon_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "privacy",
                "epsilon",
                "--noise",
                "1.1",
                "--rate",
                "0.01",
                "--rounds",
                "500",
                "--delta",
                "1e-5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "epsilon (RDP)" in out and "epsilon (PLD)" in out and "500" in out


def test_calibrate_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "privacy",
        "calibrate",
        "--epsilon",
        "8",
        "--delta",
        "1e-5",
        "--rate",
        "0.1",
        "--rounds",
        "50",
    ]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"noise_multiplier"}
    assert out["noise_multiplier"] == pytest.approx(calibrate(8.0, 1e-5, 0.1, 50), rel=1e-9)
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "noise multiplier" in table and f"{out['noise_multiplier']:.4f}" in table


def test_bad_input_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["privacy", "epsilon", "--noise", "1", "--rate", "2", "--rounds", "5", "--delta", "1e-5"]
    )
    assert code == 2
    assert "sample_rate must be in (0, 1]" in capsys.readouterr().err
