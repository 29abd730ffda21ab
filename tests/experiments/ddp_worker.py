"""Run by the DDP test under torchrun: train a tiny config and dump each step's global batch indices."""

import json
import sys

from trajlab.config import resolve_config
from trajlab.experiments.runner import run_training
from trajlab.train.callbacks import CallbackBase


class DumpIndices(CallbackBase):
    name = "dump_indices"

    def __init__(self, path):
        self.path = path
        self.rows = {}

    def on_step(self, ctx):
        self.rows[ctx.step] = ctx.batch_indices.tolist()

    def on_train_end(self, ctx):
        with open(f"{self.path}.rank{ctx.rank}", "w") as fh:
            json.dump(self.rows, fh)


if __name__ == "__main__":
    out, dump, *overrides = sys.argv[1:]
    run_training(resolve_config(None, None, overrides), out, extra_callbacks=[DumpIndices(dump)])
