"""From a config to a run, and back: build data, model, optimizer and schedule from a
:class:`~trajlab.config.RunConfig` (``build``), train a run into a directory (``runner``), the optional
callbacks a config asks for (``plugins``), and :class:`RecordedRun`, a run directory opened once.

May import every layer below it (``config``, ``data``, ``models``, ``train``, ``trajectory``,
``averaging``, ``probes``, ``theory``); nothing below imports it.
"""

from trajlab.runs.recorded import Evaluation, RecordedRun, StepBatch
from trajlab.runs.runner import RunDirError, RunOutcome, load_run_config, run_training

__all__ = [
    "Evaluation",
    "RecordedRun",
    "RunDirError",
    "RunOutcome",
    "StepBatch",
    "load_run_config",
    "run_training",
]
