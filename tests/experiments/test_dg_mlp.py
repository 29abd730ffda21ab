"""Claims D and G on the plateau MLP: the function-space distances (against a dense Hessian), the noisy
quadratic model's alignment slope (closed form), and the driver end to end (tiny)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trajlab.cli import main
from trajlab.experiments.claims.dg_mlp import function_distances, nqm_cosine_slope


def test_function_distances_against_a_dense_hessian() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y, xt = torch.randn(16, 4), torch.randint(0, 3, (16,)), torch.randn(8, 4)
    other = {k: v + 0.1 * torch.randn_like(v) for k, v in model.state_dict().items()}
    delta = torch.cat([(other[k] - p.detach()).reshape(-1) for k, p in model.named_parameters()])
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        w, b = flat[:12].reshape(3, 4), flat[12:]
        return F.cross_entropy(x @ w.T + b, y)

    hess = torch.autograd.functional.hessian(loss, w0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = function_distances(model, other, (x, y), (xt, torch.zeros(8, dtype=torch.long)))
    assert d["distance"] == pytest.approx(float(delta.norm()), rel=1e-5)
    assert d["quadratic"] == pytest.approx(0.5 * float(delta @ hess @ delta), rel=1e-4)
    with torch.no_grad():
        z, z2 = model(xt), F.linear(xt, other["weight"], other["bias"])
    assert d["logit"] == pytest.approx(float(((z2 - z) ** 2).sum(1).mean()), rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model restored


def test_nqm_cosine_slope_recovers_the_model() -> None:
    """Cosines exactly 1/sqrt(1 + c/lr): c back, N/S slope -1, and the model's cosine slope equals the
    measured one, between 0 (cos -> 1) and 1/2 (cos << 1)."""
    lrs = np.array([0.1, 0.05, 0.025, 0.0125])
    for c in (0.01, 0.1, 10.0):
        cos = 1.0 / np.sqrt(1.0 + c / lrs)
        r = nqm_cosine_slope(lrs, cos)
        assert r["c"] == pytest.approx(c) and r["ns_slope"] == pytest.approx(-1.0)
        measured = np.polyfit(np.log(lrs), np.log(cos), 1)[0]
        assert r["slope"] == pytest.approx(measured) and 0.0 < r["slope"] < 0.5


@pytest.mark.slow
def test_dg_mlp_tiny_end_to_end(tmp_path, capsys) -> None:
    args = ["reproduce", "DG-mlp", "--budget", "tiny", "--seeds", "0,1", "--out", str(tmp_path)]
    assert main([*args, "--no-progress"]) == 0
    assert "NQM" in capsys.readouterr().out
    doc = json.loads((tmp_path / "tiny" / "claim_DG-mlp.json").read_text())
    assert doc["D"]["verdict"]["replay_relative_error_max"] == 0.0  # the replay is the run's own step
    for r in doc["D"]["per_seed"].values():
        assert r["different_orders"]["distance"][0] == 0.0 and r["same_batches"]["distance"][0] > 0
        start = r["same_batches_perturbed"]["distance"][0]
        assert start == pytest.approx(1e-4 * r["same_batches"]["distance"][0], rel=1e-2)
        assert len(r["steps"]) == len(r["same_batches"]["quadratic"]) == len(r["different_orders"]["logit"])
    for r in doc["G"]["per_seed"].values():
        assert [p["lr"] for p in r["points"]] == [0.1, 0.05]
        assert all(0 < p["cosine_mean"] < 1 and p["lambda_max"] > 0 for p in r["points"])
    assert (tmp_path / "tiny" / "claim_DG-mlp.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["reproduce", "DG-mlp", "--budget", "medium", "--out", str(tmp_path)]) == 2
