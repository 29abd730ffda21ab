"""Run under torchrun by the DDP recording test: a plain DDP loop recorded by trajlab.record.

argv: OUT DUMP [fail_at_step]. Every rank dumps the batches it trained on to DUMP.rank<r>.pt; with
fail_at_step, rank 0's snapshot writes fail from that step on (its snapshot directory is replaced by a
file, which fails even for root), and every rank must stop with an error, none left waiting.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import torch
import torch.distributed as dist
from loop_fixtures import loss_fn, make_data, make_model
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import trajlab
from trajlab.averaging import EMA


def main() -> None:
    out, dump = sys.argv[1], sys.argv[2]
    fail_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = make_model()
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    train, _ = make_data()
    sampler = DistributedSampler(train, shuffle=True, seed=3)
    loader = DataLoader(train, batch_size=16, sampler=sampler)
    seen = []
    start = time.time()
    try:
        with trajlab.record(
            out,
            model,
            opt,
            loss_fn=loss_fn,
            snapshots=2,
            averages=[EMA(0.9)],
            model_factory=make_model,
            data_factory=make_data,
        ) as rec:
            for epoch in rec.epochs(2):
                sampler.set_epoch(epoch)
                for batch in rec.batches(loader):
                    seen.append(batch)
                    loss = loss_fn(ddp, batch)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    if fail_at is not None and rec.step == fail_at and rank == 0:
                        snapshots = os.path.join(out, "trajectory", "snapshots")
                        shutil.rmtree(snapshots)
                        with open(snapshots, "w") as fh:
                            fh.write("not a directory")
    except Exception as e:  # noqa: BLE001 - reported to the parent test
        print(f"rank {rank} failed after {time.time() - start:.1f}s: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
    torch.save(seen, f"{dump}.rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
