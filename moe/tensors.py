"""Plain-data types for model parts: a part's tensors and their expected specs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# A part's tensors by parameter name, e.g. {"fc1.weight": array, "fc1.bias": array}.
PartTensors = Mapping[str, NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Expected shape and dtype of one parameter tensor of a part."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def matches(self, array: np.ndarray) -> bool:
        """True when `array` has exactly this shape and dtype."""
        return tuple(array.shape) == self.shape and array.dtype == np.dtype(self.dtype)


# A part's layout: parameter name -> spec. The model's layout maps part id -> PartLayout.
PartLayout = Mapping[str, TensorSpec]
