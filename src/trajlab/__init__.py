"""trajlab: training trajectories, fixed mini-batch losses, iterate averaging and the noisy quadratic model.

A toolkit around arXiv 2301.02312 (Sandler et al., "Training trajectories, mini-batch losses and the
curious role of the learning rate").
"""

__version__ = "0.1.0"
