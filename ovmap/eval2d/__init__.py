"""2D open-vocabulary semantic segmentation benchmark (RADSeg Table 1 / A.2): ``ovmap eval2d``.

``datasets`` reads the five validation sets in their download layouts, ``protocol`` resizes / slides / merges,
``metrics`` accumulates the confusion matrix, ``evaluate`` runs one encoder over one benchmark and ``report``
writes the result files and merges runs. See README.md in this folder for each encoder's 2D settings.
"""

from ovmap.eval2d.datasets import SPECS, SegDataset2D, build_dataset2d, check_dataset2d
from ovmap.eval2d.metrics import ConfusionMatrix
from ovmap.eval2d.protocol import Budget, rescale_size, slide_windows, window_plan

__all__ = ["SPECS", "Budget", "ConfusionMatrix", "SegDataset2D", "build_dataset2d", "check_dataset2d",
           "rescale_size", "slide_windows", "window_plan"]
