"""Time periods D0..Dn: equal-count cuts of the timeline, or explicit dates.

A period is the half-open interval ``[start, next start)``; ``boundaries`` are the start times of
periods 1..N-1 (period 0 starts at the first event). Events with the same timestamp always land in
the same period, so with heavy ties the counts are only as equal as the ties allow.
"""

from __future__ import annotations

from datetime import date, datetime, timezone

import numpy as np


def equal_count_boundaries(timestamps: np.ndarray, periods: int) -> np.ndarray:
    """Start times of periods 1..N-1 so that each period holds ~len/N events.

    For each ideal cut index we choose the start of the tie run containing it or the next
    timestamp, whichever moves the cut less. Cuts that collapse onto an earlier one (a tie run
    longer than a period) are dropped, so fewer than N periods can result.
    """
    values = np.sort(np.asarray(timestamps, dtype=np.int64))
    n = len(values)
    boundaries: list[int] = []
    for k in range(1, periods):
        target = round(k * n / periods)
        if target <= 0 or target >= n:
            continue
        value = values[target]
        left = int(np.searchsorted(values, value, side="left"))
        right = int(np.searchsorted(values, value, side="right"))
        if target - left <= right - target or right >= n:
            candidate = int(value)
        else:
            candidate = int(values[right])
        if candidate > values[0] and (not boundaries or candidate > boundaries[-1]):
            boundaries.append(candidate)
    return np.asarray(boundaries, dtype=np.int64)


def date_boundaries(dates: list[date]) -> np.ndarray:
    """Explicit ISO dates → unix seconds at 00:00 UTC."""
    return np.asarray(
        [
            int(datetime.combine(d, datetime.min.time(), tzinfo=timezone.utc).timestamp())
            for d in dates
        ],
        dtype=np.int64,
    )


def assign_periods(timestamps: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """Period index of each timestamp (int16)."""
    return np.searchsorted(boundaries, timestamps, side="right").astype(np.int16)


def iso(ts: int | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(int(ts), tz=timezone.utc).isoformat().replace("+00:00", "Z")


def describe_periods(
    boundaries: np.ndarray,
    timestamps: np.ndarray,
    labels: np.ndarray,
    is_sample: np.ndarray,
) -> list[dict]:
    """Per-period counts for the manifest: events, samples, like-rates, time span."""
    count = len(boundaries) + 1
    period = assign_periods(timestamps, boundaries)
    events = np.bincount(period, minlength=count)
    likes = np.bincount(period, weights=labels, minlength=count)
    samples = np.bincount(period[is_sample], minlength=count)
    sample_likes = np.bincount(period[is_sample], weights=labels[is_sample], minlength=count)
    first = np.full(count, np.iinfo(np.int64).max)
    last = np.full(count, np.iinfo(np.int64).min)
    np.minimum.at(first, period, timestamps)
    np.maximum.at(last, period, timestamps)
    starts = [None, *boundaries.tolist()]
    ends = [*boundaries.tolist(), None]
    rows = []
    for p in range(count):
        rows.append(
            {
                "period": p,
                "start": iso(starts[p]),
                "end": iso(ends[p]),
                "first_event": iso(int(first[p])) if events[p] else None,
                "last_event": iso(int(last[p])) if events[p] else None,
                "events": int(events[p]),
                "like_rate": round(float(likes[p] / events[p]), 6) if events[p] else None,
                "samples": int(samples[p]),
                "sample_like_rate": round(float(sample_likes[p] / samples[p]), 6)
                if samples[p]
                else None,
            }
        )
    return rows
