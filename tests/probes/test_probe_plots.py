"""Smoke tests of the probe plots from result dicts (Agg, no training)."""

import json

import matplotlib
import torch
from probe_fixtures import TinyCNN

from trajlab.probes import batch_memory, line_profile, loss_matrix
from trajlab.reports.probe_plots import (
    plot_batch_memory,
    plot_line_profile,
    plot_loss_matrix,
    plot_lr_star_over_training,
)

matplotlib.use("Agg")


def test_plots_render_from_json_round_tripped_results(tmp_path, cnn):
    model, batch, control = cnn
    prof = json.loads(
        json.dumps(
            line_profile(
                model, torch.nn.functional.cross_entropy, batch, lrs=[0.5, 1, 2, 4, 8], eval_batches=[control]
            ).to_dict()
        )
    )
    plot_line_profile(prof).savefig(tmp_path / "line.png")
    recs = [{**prof, "step": s, "lr": 0.1} for s in (10, 20)]
    plot_lr_star_over_training(recs).savefig(tmp_path / "lr.png")

    class Store:
        def steps(self):
            return [0, 1, 2]

        def load(self, step, device=None, dtype=None):
            return {k: v + 0.01 * step if v.is_floating_point() else v for k, v in model.state_dict().items()}

        def batch(self, step, device=None):
            return batch

        def batch_indices(self, step):
            return torch.arange(16)

    m = loss_matrix(Store(), [1, control], None, lambda: TinyCNN().double())
    plot_loss_matrix(json.loads(json.dumps(m.to_dict()))).savefig(tmp_path / "m.png")
    plot_batch_memory(batch_memory(m).to_dict()).savefig(tmp_path / "mem.png")
    assert all((tmp_path / f).stat().st_size > 0 for f in ("line.png", "lr.png", "m.png", "mem.png"))
