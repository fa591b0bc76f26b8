"""Event-detection plots: what the detector and the tokenizer see in a stretch of one recording.

`plot_events` draws one panel per channel over a time span of a corpus recording: the harmonized
signal, its envelope, the hysteresis thresholds (recording-level noise floor x `high` and x `low`),
the contraction events (the event span light, the channel's own active part darker), the token
groups (`group.rank` at each active channel's onset: event index inside its file piece and the
channel's recruitment rank in that group) and the labeled segments as a coloured band on top.
Bad channels are drawn grey with their quality flags.

Events and tokens come from the same functions and the same inputs as `aemg_dist.coverage`:
the floor of the whole recording, detection per contiguous piece between file joins. So a plot
shows exactly the events that the coverage numbers count.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from preprocessing.corpus import Corpus  # noqa: E402
from preprocessing.recording import split_at_joins  # noqa: E402

from .events import EventConfig, Events, detect_events, recording_floor  # noqa: E402
from .tokens import TokenConfig, WindowTokens, tokenize_window  # noqa: E402

MAX_PANELS = 16  # more channels than this (HD grids): only the most active ones are drawn
MAX_POINTS = 20_000  # per signal line; longer spans are drawn with a stride
SIGNAL_COLOR, ENVELOPE_COLOR = "#9ecae1", "#08306b"
HIGH_COLOR, LOW_COLOR = "#d62728", "#ff7f0e"
EVENT_COLOR, ACTIVE_COLOR = "#fee8c8", "#fc8d59"
BAD_FACE = "#e0e0e0"


def plot_events(corpus_path: str | Path, key: str, out_png: str | Path, start_s: float = 0.0,
                duration_s: float = 20.0, ev_cfg: EventConfig | None = None,
                tok_cfg: TokenConfig | None = None) -> Path:
    """Draw the events of recording `key` over [start_s, start_s + duration_s) into `out_png`; returns its path.

    Raises KeyError (naming the key) for an unknown recording and ValueError for a span that
    does not overlap the recording.
    """
    ev_cfg, tok_cfg = ev_cfg or EventConfig(), tok_cfg or TokenConfig()
    corpus = Corpus(corpus_path)
    attrs = corpus.attrs(key)
    fs, n_samples = float(attrs["fs"]), int(attrs["n_samples"])
    view = (max(0, round(start_s * fs)), min(n_samples, round((start_s + duration_s) * fs)))
    if view[0] >= view[1]:
        raise ValueError(f"{key}: span [{start_s}, {start_s + duration_s}) s is outside the recording "
                         f"of {n_samples / fs:.1f} s")
    x = corpus.read(key)
    channel_ok = np.asarray(attrs["channel_ok"], dtype=bool)
    positions, source_fs = np.asarray(attrs["canonical_coordinates"]), float(attrs["source_fs"])
    floor = recording_floor(lambda a, b: x[a:b], n_samples, fs, ev_cfg)
    detected = []  # (piece start, events, tokens) of every piece that overlaps the view
    for a, b in split_at_joins(n_samples, attrs["joins"]):
        if a < view[1] and b > view[0]:
            # tokenize_window detects the same events again; the plot needs both the events' per-channel
            # spans and the tokens' group/rank order, and a few pieces make that cheap.
            events = detect_events(x[a:b], fs, ev_cfg, channel_ok=channel_ok, floor=floor)
            tokens = tokenize_window(x[a:b], fs, positions, source_fs, channel_ok, ev_cfg, tok_cfg, floor)
            detected.append((a, events, tokens))

    shown = _most_active(detected, view, channel_ok)
    fig, axes = plt.subplots(len(shown) + 1, 1, sharex=True, figsize=(16, 1.4 + 1.05 * len(shown)),
                             gridspec_kw={"height_ratios": [0.45] + [1.0] * len(shown)}, squeeze=False,
                             layout="constrained")
    try:  # a failed drawing must not leak the figure into pyplot's registry
        band_ax, panels = axes[0, 0], axes[1:, 0]
        _draw_segments(band_ax, attrs, view, fs)
        for ax, channel in zip(panels, shown):
            _draw_channel(ax, channel, x, fs, view, floor[channel], detected, attrs, ev_cfg)
        for ax in axes[:, 0]:
            for join in attrs["joins"]:
                if view[0] < join < view[1]:
                    ax.axvline(join / fs, color="0.4", lw=0.6, ls=(0, (2, 3)))
        panels[-1].set_xlim(view[0] / fs, view[1] / fs)
        panels[-1].set_xlabel("time in recording (s); dotted lines: file joins")

        n_channels = x.shape[1]
        which = (f"the {len(shown)} most active of {n_channels} channels" if len(shown) < n_channels
                 else f"{n_channels} channels")
        fig.suptitle(f"{key}: {which}, source {source_fs:g} Hz. Floor of the whole recording, "
                     f"detection per file piece; numbers = event group . recruitment rank", fontsize=10)
        fig.legend(handles=_legend_handles(ev_cfg), loc="outside lower center", ncol=6, fontsize=8, frameon=False)
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=100)
    finally:
        plt.close(fig)
    return out_png


def _most_active(detected: list[tuple[int, Events, WindowTokens]], view: tuple[int, int],
                 channel_ok: np.ndarray) -> np.ndarray:
    """Channel indices to draw, in channel order: all, or the MAX_PANELS with the most active time in the view."""
    n_channels = channel_ok.shape[0]
    if n_channels <= MAX_PANELS:
        return np.arange(n_channels)
    active_samples = np.zeros(n_channels)
    for a, events, _ in detected:
        on = np.clip(a + events.channel_onset, *view)
        off = np.clip(a + events.channel_offset, *view)
        active_samples += ((off - on) * events.active).sum(axis=0)
    # Most active first; good channels before bad ones at equal activity (bad ones never have events).
    order = np.lexsort((~channel_ok, -active_samples))
    return np.sort(order[:MAX_PANELS])


def _draw_segments(ax: plt.Axes, attrs: dict, view: tuple[int, int], fs: float) -> None:
    """The labeled segments as a coloured band (rest light grey) with their names."""
    colors = plt.get_cmap("tab10").colors
    for seg in attrs["segments"]:
        a, b = max(seg["start"], view[0]), min(seg["stop"], view[1])
        if a >= b:
            continue
        rest = seg["label"] == attrs["rest_label"]
        ax.axvspan(a / fs, b / fs, color="0.88" if rest else colors[seg["label"] % len(colors)],
                   alpha=1.0 if rest else 0.45, lw=0)
        ax.text((a + b) / 2 / fs, 0.5, seg["label_name"], ha="center", va="center", fontsize=7, clip_on=True,
                style="italic" if rest else "normal")
    ax.set_yticks([])
    ax.set_ylabel("label", rotation=0, ha="right", va="center", fontsize=8)


def _draw_channel(ax: plt.Axes, channel: int, x: np.ndarray, fs: float, view: tuple[int, int], floor: float,
                  detected: list[tuple[int, Events, WindowTokens]], attrs: dict, cfg: EventConfig) -> None:
    """One channel: events, signal, envelope, thresholds and token marks; grey with its flags when bad.

    Two y axes share the panel. Underneath, `ax` holds the event spans and the signal on its own
    linear scale (no ticks: it is context). On top, a log axis holds the envelope and the thresholds:
    rest-level envelopes and both thresholds stay readable next to contractions tens of times
    stronger, which a linear axis would squash into one line.
    """
    ok = bool(attrs["channel_ok"][channel])
    flags = ", ".join(attrs["channel_quality"][channel])
    env_ax = ax.twinx()
    env_ax.set_zorder(ax.get_zorder() + 1)
    env_ax.patch.set_visible(False)
    env_peak = 0.0
    for a, events, tokens in detected:
        for onset, offset, active, ch_on, ch_off in zip(events.onset, events.offset, events.active[:, channel],
                                                        events.channel_onset[:, channel],
                                                        events.channel_offset[:, channel]):
            ax.axvspan((a + onset) / fs, (a + offset) / fs, color=EVENT_COLOR, lw=0)
            if active:
                ax.axvspan((a + ch_on) / fs, (a + ch_off) / fs, color=ACTIVE_COLOR, alpha=0.45, lw=0)
        # Envelope point k summarizes samples [k*step, (k+1)*step): draw it at the block centre.
        env_t = a / fs + (np.arange(events.env.shape[0]) + 0.5) / events.env_fs
        inside = (env_t >= view[0] / fs) & (env_t < view[1] / fs)
        env_ax.plot(env_t[inside], events.env[inside, channel], color=ENVELOPE_COLOR if ok else "0.35", lw=0.9)
        env_peak = max(env_peak, float(events.env[inside, channel].max(initial=0.0)))
        mark = (tokens.channel == channel) & tokens.active
        onset_s = a / fs + tokens.onset_s[mark]
        for i, (t, group, rank) in enumerate(zip(onset_s, tokens.group[mark], tokens.rank[mark])):
            if view[0] / fs <= t < view[1] / fs:  # two staggered rows, so neighbouring marks overlap less
                env_ax.text(t, 0.97 - 0.14 * (i % 2), f"{group}.{rank}", transform=env_ax.get_xaxis_transform(),
                            fontsize=6.5, va="top", ha="left", color="0.15", clip_on=True)

    stride = max(1, (view[1] - view[0]) // MAX_POINTS)
    samples = np.arange(view[0], view[1], stride)
    signal = x[samples, channel]
    ax.plot(samples / fs, signal, color=SIGNAL_COLOR if ok else "0.7", lw=0.4, alpha=0.8)
    reach = max(float(np.abs(signal).max(initial=0.0)), 1e-6)
    ax.set_ylim(-1.05 * reach, 1.05 * reach)
    ax.set_yticks([])

    floor = max(float(floor), 1e-3)  # a flat bad channel has a zero floor, which a log axis cannot show
    env_ax.axhline(cfg.high * floor, color=HIGH_COLOR, lw=0.9, ls="--")
    env_ax.axhline(cfg.low * floor, color=LOW_COLOR, lw=0.9, ls=":")
    env_ax.set_yscale("log")
    env_ax.set_ylim(0.25 * floor, 1.5 * max(env_peak, cfg.high * floor))
    env_ax.yaxis.set_minor_formatter(NullFormatter())  # spans under a decade would label every minor tick
    env_ax.yaxis.tick_left()
    env_ax.tick_params(labelsize=7)
    label = f"ch {channel}" + (f"\nBAD: {flags}" if not ok else (f"\n{flags}" if flags else ""))
    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8, color="0.1" if ok else "#b00000",
                  labelpad=28)
    if not ok:
        ax.set_facecolor(BAD_FACE)


def _legend_handles(cfg: EventConfig) -> list:
    return [Line2D([], [], color=SIGNAL_COLOR, lw=1, label="signal (own linear scale)"),
            Line2D([], [], color=ENVELOPE_COLOR, lw=1, label=f"{cfg.envelope} envelope (log scale)"),
            Line2D([], [], color=HIGH_COLOR, lw=1, ls="--", label=f"floor x {cfg.high:g}"),
            Line2D([], [], color=LOW_COLOR, lw=1, ls=":", label=f"floor x {cfg.low:g}"),
            Patch(color=EVENT_COLOR, label="event"),
            Patch(color=ACTIVE_COLOR, alpha=0.45, label="channel active")]
