"""llm.c's OutlierDetector: z-score of a value against a sliding window of the last 128."""

import math
from collections import deque

WINDOW = 128


class OutlierDetector:
    def __init__(self):
        self.window: deque[float] = deque()
        self.sum = self.sum_sq = 0.0

    def update(self, value: float) -> float:
        """Add value; its z-score against the window, NaN until the window is full."""
        full = len(self.window) == WINDOW
        if full:
            old = self.window.popleft()
            self.sum -= old
            self.sum_sq -= old * old
        self.window.append(value)
        self.sum += value
        self.sum_sq += value * value
        if not full:
            return math.nan
        mean = self.sum / WINDOW
        std = math.sqrt(max(self.sum_sq / WINDOW - mean * mean, 0.0))
        return 0.0 if std == 0.0 else (value - mean) / std

    def state(self) -> list[float]:
        return list(self.window)

    def restore(self, values: list[float]) -> None:
        self.__init__()
        for v in values:
            self.update(v)
