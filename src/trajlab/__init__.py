"""trajlab: training trajectories, fixed mini-batch losses, iterate averaging and the noisy quadratic model.

A toolkit around arXiv 2301.02312 (Sandler et al., "Training trajectories, mini-batch losses and the
curious role of the learning rate").

Public names (imported on first use, so ``import trajlab`` stays light):

* :func:`record`: record the trajectory of your own training loop (:mod:`trajlab.runs.recording`);
* :class:`SeededAugmentation`: random augmentation that a recorded step's batch can be rebuilt with;
* :class:`RecordedRun`: a recorded run directory, opened once (any loop's).
"""

from __future__ import annotations

from typing import Any

from trajlab.version import __version__

__all__ = ["RecordedRun", "SeededAugmentation", "__version__", "record"]


def __getattr__(name: str) -> Any:
    if name == "record":
        from trajlab.runs.recording import record

        return record
    if name == "SeededAugmentation":
        from trajlab.runs.loaders import SeededAugmentation

        return SeededAugmentation
    if name == "RecordedRun":
        from trajlab.runs.recorded import RecordedRun

        return RecordedRun
    raise AttributeError(f"module 'trajlab' has no attribute {name!r}")
