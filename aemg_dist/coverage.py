"""How well contraction events line up with the labels: event coverage of gesture vs rest time.

A good detector marks most of the time a subject holds or performs a gesture and little of the
time the subject rests. For one recording, `event_coverage` measures

    gesture coverage = share of gesture-segment samples that lie inside an event
    rest coverage    = share of rest-segment samples (label == the recording's `rest_label`)
                       that lie inside an event

where "inside an event" is the per-sample union over channels of event spans (an event already is
the union of the overlapping channels' active intervals; splitting long events into chunks does
not change which samples are covered). Samples outside every labeled segment count for neither.

Events are detected the way the product's tokenizer sees a recording:

- the noise floor is estimated once on the whole recording's envelope (`recording_floor`), so a
  file that holds a gesture throughout is judged against the recording's rest, not its own;
- detection runs separately on each contiguous piece between `joins` (the recording is a
  concatenation of source files there), so no envelope smoothing or event crosses a file
  boundary, exactly as harmonization filters each piece on its own;
- bad channels (`channel_ok` False) never produce events.

`coverage_table` pools recordings per dataset, weighting by time (covered seconds over labeled
seconds), so long recordings count in proportion to their data. It reads each recording once and
runs in a single process: the whole shared corpus (6.8 h of EMG) takes seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.corpus import Corpus

from preprocessing.recording import split_at_joins

from .events import EventConfig, detect_events, recording_floor


def covered_mask(x: np.ndarray, fs: float, joins: Iterable[int], cfg: EventConfig,
                 channel_ok: np.ndarray) -> np.ndarray:
    """(n_samples,) bool: True where any channel is inside a contraction event (recording-level floor)."""
    floor = recording_floor(lambda a, b: x[a:b], x.shape[0], fs, cfg)
    starts, stops = [], []
    for start, stop in split_at_joins(x.shape[0], joins):
        events = detect_events(x[start:stop], fs, cfg, channel_ok=channel_ok, floor=floor)
        starts.append(start + events.onset)
        stops.append(start + events.offset)
    # Events are disjoint, so +1 at each onset and -1 at each offset, summed up, is 1 exactly inside them.
    edges = np.zeros(x.shape[0] + 1, dtype=np.int64)
    np.add.at(edges, np.concatenate(starts), 1)
    np.add.at(edges, np.concatenate(stops), -1)
    return np.cumsum(edges[:-1]) > 0


def event_coverage(corpus: Corpus, key: str, ev_cfg: EventConfig | None = None) -> dict[str, Any]:
    """Gesture and rest coverage of one recording (see the module docstring).

    Returns key, dataset, fs, the labeled seconds (`gesture_s`, `rest_s`), the covered seconds
    (`gesture_covered_s`, `rest_covered_s`) and the shares (`gesture_coverage`, `rest_coverage`;
    None where the recording has no such time). Raises KeyError for an unknown key.
    """
    cfg = ev_cfg or EventConfig()
    attrs = corpus.attrs(key)  # KeyError naming the key when it is not a recording
    fs = float(attrs["fs"])
    covered = covered_mask(corpus.read(key), fs, attrs["joins"], cfg, np.asarray(attrs["channel_ok"], dtype=bool))
    covered_before = np.zeros(covered.shape[0] + 1, dtype=np.int64)  # covered samples in [0, i)
    np.cumsum(covered, out=covered_before[1:])

    segments = attrs["segments"]
    start = np.array([s["start"] for s in segments], dtype=np.int64)
    stop = np.array([s["stop"] for s in segments], dtype=np.int64)
    is_rest = np.array([s["label"] == attrs["rest_label"] for s in segments], dtype=bool)
    length = stop - start
    hits = covered_before[stop] - covered_before[start]
    totals = {
        "gesture_s": length[~is_rest].sum() / fs, "rest_s": length[is_rest].sum() / fs,
        "gesture_covered_s": hits[~is_rest].sum() / fs, "rest_covered_s": hits[is_rest].sum() / fs,
    }
    return {"key": key, "dataset": attrs["dataset"], "fs": fs, **{k: float(v) for k, v in totals.items()},
            **_shares(totals)}


def coverage_table(corpus_path: str | Path, ev_cfg: EventConfig | None = None,
                   datasets: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One row per dataset (sorted by name): gesture and rest coverage pooled over its recordings.

    Row keys: dataset, recordings, gesture_s, rest_s, gesture_coverage, rest_coverage and ratio =
    gesture / rest coverage (inf when no rest sample is covered; None without rest or gesture time).
    `datasets` restricts the table to those names (all by default); an unknown name raises KeyError.
    """
    corpus = Corpus(corpus_path)
    present = sorted({e.dataset for e in corpus.entries})
    wanted = present if datasets is None else sorted(set(datasets))
    missing = [d for d in wanted if d not in present]
    if missing:
        raise KeyError(f"datasets {missing} are not in {corpus.path} (it has {present})")
    rows = []
    for dataset in wanted:
        per_recording = [event_coverage(corpus, e.key, ev_cfg) for e in corpus.entries if e.dataset == dataset]
        totals = {name: sum(r[name] for r in per_recording)
                  for name in ("gesture_s", "rest_s", "gesture_covered_s", "rest_covered_s")}
        shares = _shares(totals)
        rows.append({"dataset": dataset, "recordings": len(per_recording), "gesture_s": totals["gesture_s"],
                     "rest_s": totals["rest_s"], **shares, "ratio": _ratio(shares)})
    return rows


def _shares(totals: dict[str, float]) -> dict[str, float | None]:
    return {f"{kind}_coverage": totals[f"{kind}_covered_s"] / totals[f"{kind}_s"] if totals[f"{kind}_s"] else None
            for kind in ("gesture", "rest")}


def _ratio(shares: dict[str, float | None]) -> float | None:
    gesture, rest = shares["gesture_coverage"], shares["rest_coverage"]
    if gesture is None or rest is None:
        return None
    return gesture / rest if rest > 0 else math.inf
