"""Reference predictors that every trained model must beat."""

from __future__ import annotations

import numpy as np


class LabelPriorPredictor:
    """Scores every image with the training frequency of each class (no image information).

    Its official-protocol macro-F1 is the floor of the task: a model that does not beat it has
    learned nothing from the pixels.
    """

    def __init__(self) -> None:
        self.priors: np.ndarray | None = None

    def fit(self, train_labels: np.ndarray) -> LabelPriorPredictor:
        labels = np.asarray(train_labels, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[0] == 0:
            raise ValueError(f"train labels must be a non-empty [N, C] matrix, got shape {labels.shape}")
        self.priors = labels.mean(axis=0)
        return self

    def predict(self, num_images: int) -> np.ndarray:
        if self.priors is None:
            raise RuntimeError("LabelPriorPredictor.predict called before fit")
        return np.tile(self.priors.astype(np.float32), (num_images, 1))
