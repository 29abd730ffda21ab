"""Framework callbacks over :func:`trajlab.record`: a thin adapter per framework, imported on demand.

* :mod:`trajlab.integrations.lightning`: ``TrajectoryCallback``, a Lightning callback
  (``pip install trajlab[lightning]``);
* :mod:`trajlab.integrations.hf`: ``TrajectoryCallback``, a Hugging Face ``TrainerCallback``
  (``pip install trajlab[hf]``).

Importing this package needs neither framework; importing a submodule without its framework raises one
``ImportError`` line naming the extra to install.
"""
