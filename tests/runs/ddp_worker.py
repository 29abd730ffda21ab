"""Run by the DDP test under torchrun: train a tiny config and dump each step's global batch indices."""

import json
import os
import sys
import time

from trajlab.cli import host_from_environment
from trajlab.config import resolve_config
from trajlab.runs.runner import run_training
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
        # Every rank's online averages (if any), flattened to lists, to compare across ranks.
        averaging = ctx.trainer_state()["callbacks"].get("averaging")
        if averaging:
            flat = {}

            def walk(d, prefix):
                for k, v in d.items():
                    if isinstance(v, dict):
                        walk(v, f"{prefix}{k}.")
                    elif hasattr(v, "tolist"):
                        flat[prefix + k] = v.flatten().tolist()

            walk(averaging, "")
            with open(f"{self.path}.avg.rank{ctx.rank}", "w") as fh:
                json.dump(flat, fh)


class FailOnRank0(CallbackBase):
    """Stands for a writer error on rank 0 (disk full, I/O error) at one step."""

    name = "fail_on_rank0"

    def __init__(self, step):
        self.step = step

    def on_step(self, ctx):
        if ctx.rank == 0 and ctx.step == self.step:
            raise OSError(f"rank 0 writer failed at step {ctx.step}")


if __name__ == "__main__":
    out, dump, *overrides = sys.argv[1:]
    fail_at = [int(o.split("=")[1]) for o in overrides if o.startswith("fail_at=")]
    overrides = [o for o in overrides if not o.startswith("fail_at=")]
    # What the CLI passes down: torchrun's RANK / WORLD_SIZE / LOCAL_RANK, the thread setter.
    host = host_from_environment(os.environ)
    callbacks = [DumpIndices(dump), *(FailOnRank0(s) for s in fail_at)]
    t0 = time.monotonic()
    try:
        run_training(resolve_config(None, None, overrides), out, extra_callbacks=callbacks, host=host)
    except Exception as e:
        print(f"rank {os.environ.get('RANK', 0)} stopped after {time.monotonic() - t0:.1f}s: {e}", flush=True)
        time.sleep(2)  # let the other rank report before torchrun tears the group down
        raise
