"""The per-file stream controller's decisions, fed exact (bytes, seconds, errors) windows, and the chunk memory.

The controller keeps no clock, so every decision here is exact; the loopback run where the hub paces each
connection and the count grows is in tests/test_models.py.
"""

from __future__ import annotations

import hashlib

import google_crc32c

from gptoss_gke.staging.chunks import Buffer, ChunkMemory, combine_crc32c, extend_crc32c
from gptoss_gke.staging.streams import StreamController

MB = 1_000_000


def drive(ctrl: StreamController, rate_of, windows: int, *, errors_at=()) -> list[int]:
    """Feed ``windows`` one-second windows whose rate is ``rate_of(streams in flight)``; the counts after each."""
    counts = []
    for w in range(windows):
        errors = 1 if w in errors_at else 0
        counts.append(ctrl.sample(int(rate_of(ctrl.streams)), 1.0, errors))
    return counts


def per_connection(cap: float, plateau: int | None = None):
    """Each connection carries ``cap``; past ``plateau`` connections the edge gives nothing more."""
    return lambda n: cap * (n if plateau is None else min(n, plateau))


def test_climbs_one_stream_at_a_time_while_each_brings_more_up_to_the_limit():
    ctrl = StreamController(2, 6)
    counts = drive(ctrl, per_connection(40 * MB), 12)
    # Every change is followed by one warm-up window that is not judged.
    assert counts == [2, 3, 3, 4, 4, 5, 5, 6, 6, 6, 6, 6]
    assert (ctrl.start, ctrl.streams, ctrl.peak) == (2, 6, 6)


def test_a_stream_that_brings_nothing_is_taken_back_and_the_count_holds():
    ctrl = StreamController(2, 8)
    counts = drive(ctrl, per_connection(40 * MB, plateau=4), 12)
    assert counts[:7] == [2, 3, 3, 4, 4, 5, 5]
    assert counts[7:] == [4, 4, 4, 4, 4]  # 5 gave no more than 4: back to 4, held
    assert ctrl.peak == 5 and not ctrl.climbing


def test_a_gain_within_the_margin_does_not_pay_for_another_stream():
    ctrl = StreamController(3, 8, margin=0.10)
    rates = {3: 90 * MB, 4: 98 * MB}  # +9%: within the margin
    counts = drive(ctrl, lambda n: rates.get(n, 0), 4)
    assert counts == [3, 4, 4, 3]


def test_errors_halve_the_count_and_it_holds_until_it_probes_again():
    ctrl = StreamController(4, 8, reprobe_after=3)
    counts = drive(ctrl, per_connection(40 * MB), 12, errors_at={3})
    assert counts[:3] == [4, 5, 5]
    assert counts[3] == 2  # a 429 or a reset: half of 5
    # Held at 2 (one warm-up window, then three judged ones), then one more is tried, and pays.
    assert counts[4:9] == [2, 2, 2, 3, 3]
    assert counts[9:] == [4, 4, 5]


def test_the_count_stays_between_one_and_the_limit():
    ctrl = StreamController(1, 1)
    assert drive(ctrl, per_connection(40 * MB), 5) == [1] * 5
    ctrl = StreamController(9, 4)  # asked to start above the limit: the limit
    assert ctrl.streams == 4
    ctrl = StreamController(1, 8)
    assert drive(ctrl, per_connection(40 * MB), 4, errors_at={0, 1, 2, 3}) == [1, 1, 1, 1]
    assert ctrl.sample(10 * MB, 0.0) == 1  # an empty window decides nothing


def test_after_a_change_the_next_window_is_warm_up_even_if_it_looks_bad():
    ctrl = StreamController(2, 8)
    assert ctrl.sample(80 * MB, 1.0) == 2  # the first window: warm-up
    assert ctrl.sample(80 * MB, 1.0) == 3
    assert ctrl.sample(1, 1.0) == 3  # straddles the change (a new connection starts slow): not judged
    assert ctrl.sample(120 * MB, 1.0) == 4


def test_chunk_memory_is_reused_and_hashes_read_it_in_place():
    memory = ChunkMemory(4 * 1024 * 1024)
    data = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    first = Buffer(None, len(data), memory)
    view = first.space(len(data))
    view[:] = data
    first.commit(len(data))
    [whole] = list(first.pieces())
    assert extend_crc32c(7, whole) == google_crc32c.extend(7, data)  # in place, through the C library
    assert extend_crc32c(7, data) == google_crc32c.extend(7, data)  # bytes: the copying way, the fallback's
    assert hashlib.sha256(whole).hexdigest() == hashlib.sha256(data).hexdigest()
    assert bytes(first.body()) == data
    block = first._data
    first.close()
    second = Buffer(None, len(data), memory)
    assert second._data is block  # the same memory again: no fresh pages for the next chunk
    short = Buffer(None, 10, memory)
    short.write(b"0123456789")
    assert bytes(short.body()) == b"0123456789" and short._data is not block


def test_the_files_crc32c_follows_from_its_parts_without_reading_them_again():
    parts = [bytes(range(256)) * 40, b"", b"x", bytes(reversed(range(256))) * 3 + b"tail"]
    crc = 0
    for part in parts:
        crc = combine_crc32c(crc, google_crc32c.value(part), len(part))
    assert crc == google_crc32c.value(b"".join(parts))
