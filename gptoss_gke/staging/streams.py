"""How many byte ranges of one file to keep in flight: adapted to what the hub gives, per file.

A hub's CDN edge caps what one connection carries (measured 8.7-68 MB/s by edge), so several ranges of a
file in flight add up; but past some count an edge stops giving more, or starts refusing (429) or resetting.
A fixed count is wrong both ways: too few holds a fast edge back, too many makes a struggling one worse.
:class:`StreamController` climbs one stream at a time while the file's aggregate rate still grows by more
than a margin, goes back one step when the last stream did not pay, and halves on errors. It is pure: fed
(bytes, seconds, errors) per measuring window, it keeps no clock, so its decisions are tested exactly.
"""

from __future__ import annotations

# A window is this long (seconds of wall time) before it becomes a sample: long enough to hold several socket
# reads of every stream in flight, short enough that a 4 GB file sees tens of decisions.
SAMPLE_S = 0.5
MARGIN = 0.10  # one more stream must raise the file's rate by more than this fraction to be kept
REPROBE_AFTER = 8  # windows held at one count before one more stream is tried again (edges and links change)


class StreamController:
    """``streams``: how many ranges of the file to have in flight now, between 1 and ``limit``.

    * The first window after a change is warm-up (it straddles the change, and a new connection starts
      slow): it is not judged.
    * Climbing: the rate at this count is compared with the rate one count below. More than ``margin``
      better, or nothing below to compare with: one more stream (up to ``limit``). Otherwise the last
      stream did not pay: back to the count below, and hold.
    * Holding: after ``reprobe_after`` windows, try one more again.
    * Errors in a window (429, 5xx, a reset connection): halve (at least 1), and hold.
    """

    def __init__(self, start: int, limit: int, *, margin: float = MARGIN, reprobe_after: int = REPROBE_AFTER):
        self.limit = max(1, limit)
        self.start = max(1, min(start, self.limit))
        self.streams = self.start
        self.peak = self.start
        self.margin = margin
        self.reprobe_after = reprobe_after
        self.climbing = True
        self._warming = True
        self._rate_below: float | None = None  # the rate one count lower, while climbing
        self._held = 0

    def sample(self, nbytes: int, seconds: float, errors: int = 0) -> int:
        """One window of the file: bytes that arrived, its length, transient errors in it. Returns ``streams``."""
        if errors:
            self._hold(max(1, self.streams // 2))
            return self.streams
        if seconds <= 0:
            return self.streams
        if self._warming:
            self._warming = False
            return self.streams
        rate = nbytes / seconds
        if self.climbing:
            if self._rate_below is not None and rate <= self._rate_below * (1 + self.margin):
                self._hold(self.streams - 1)  # the last stream added did not pay
            elif self.streams < self.limit:
                self._climb(rate)
            else:
                self._hold(self.streams)
            return self.streams
        self._held += 1
        if self._held >= self.reprobe_after and self.streams < self.limit:
            self._climb(rate)
        return self.streams

    def _climb(self, rate: float) -> None:
        self.climbing = True
        self._rate_below = rate
        self._set(self.streams + 1)

    def _hold(self, streams: int) -> None:
        self.climbing = False
        self._rate_below = None
        self._held = 0
        self._set(streams)

    def _set(self, streams: int) -> None:
        if streams != self.streams:
            self._warming = True
        self.streams = streams
        self.peak = max(self.peak, streams)
