"""Built-in synthetic surface-EMG generator: the embedded default dataset.

Generative model of one recording (one subject, one session):

1. Anatomy. `N_MUSCLES` virtual muscles lie around the forearm (angle, distance along it,
   depth) in the canonical frame of `geometry`. Each gesture is a muscle synergy: 2-3 primary
   muscles with strong weights and weak co-activation elsewhere. Anatomy and synergies depend
   on the seed only, so every synthetic dataset samples the same "population".
2. Subject. Muscles move a little, synergy weights are perturbed (same gesture, personal
   execution), each muscle has its own recruitment delay per gesture, the band sits rotated
   around and shifted along the forearm, and skin and fat set an overall gain.
3. Session. The band is re-donned (small extra rotation and shift, a contact gain per
   electrode); the protocol alternates rest and gestures, gesture order shuffled per
   repetition, segment lengths jittered by a few samples.
4. Muscles. Each activation envelope (reaction delay, onset ramp, plateau, offset ramp,
   8-12 Hz tremor) drives a motor-unit pool: size-ordered recruitment thresholds, rate coding
   8-35 Hz, quasi-regular (gamma renewal) firing and Hermite-Rodriguez MUAPs, simulated at
   >= 2 kHz so MUAP shapes are resolved even for a 200 Hz device.
5. Device. The device's analog band-pass (20 Hz to min(450 Hz, 0.4 fs), exactly nothing above
   0.45 fs) and decimation bring each muscle signal to the device rate. A volume conductor
   mixes muscles into electrodes by (depth / distance)^2, the distance taken around and along
   the forearm from each electrode's actual (rotated, shifted) position. Then amplifier noise
   (same band), powerline at 50/60 Hz, a DC offset, occasionally one bad channel (flat, very
   noisy or clipped), the gain into the device's units and, for ADC devices, rounding and
   clipping at the converter's range. The model is linear up to the ADC, so band-limiting the
   few muscle signals before mixing is the same as filtering every electrode, only cheaper.

Every draw comes from a Generator seeded by SeedSequence(seed, spawn_key=(stage, dataset,
subject, session, stream)), so a recording never depends on which others are generated and
the same seed gives bit-identical arrays. All per-sample work is vectorized numpy.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np
from scipy import fft

from aemg_dist.config import check_ranges

from .geometry import DEFAULT_CIRCUMFERENCE_MM, ElectrodeLayout
from .recording import RawRecording, Segment

GESTURE_NAMES = ("rest", "hand_close", "hand_open", "wrist_flexion", "wrist_extension", "pronation",
                 "supination", "radial_deviation", "ulnar_deviation", "pinch", "chuck_grip")
REST_LABEL = 0
BAD_CHANNEL_KINDS = ("flat", "noisy", "clipped")
N_MUSCLES = 8
MIN_INTERNAL_FS = 2000.0  # motor-unit trains need ~0.5 ms resolution for MUAP shapes
FOREARM_RADIUS_MM = DEFAULT_CIRCUMFERENCE_MM / (2 * np.pi)
RATE_MIN_HZ, RATE_MAX_HZ = 8.0, 35.0  # motor-unit firing rate at recruitment and at full drive
FIRING_REGULARITY = 10.0  # gamma shape of inter-spike intervals: CV = 1/sqrt(10) ~ 0.3
TRUTH_FRACTION = 0.05  # a channel is "active" where its envelope exceeds this share of its max
BAD_NOISE_FACTOR = 50.0  # a "noisy" channel's extra noise, in multiples of the amplifier noise
BAD_CLIP_GAIN = 20.0  # a "clipped" ADC channel: a gain fault that drives it into the rails
# spawn-key stages and per-session streams: each kind of draw has its own Generator
_ANATOMY, _SUBJECT, _SESSION = 0, 1, 2
_PLACEMENT, _PROTOCOL, _SPIKES, _NOISE, _BAD = range(5)
# blocks that bound the generator's temporaries (rows of samples or FFT bins; channels)
_ROW_BLOCK, _CHANNEL_BLOCK = 65536, 8


@dataclass
class SyntheticDatasetSpec:
    """One synthetic dataset: a device, a protocol and a population of subjects."""

    name: str
    fs: float
    layout: dict  # electrodes.json-style, for ElectrodeLayout.from_dict
    units: str
    gain: float  # device units per microvolt
    n_subjects: int
    n_sessions: int
    n_gestures: int  # including rest (label 0)
    n_reps: int
    gesture_s: float
    rest_s: float
    powerline_hz: float  # 0 = no mains interference
    adc_range: tuple[float, float] | None  # ADC devices: integer counts clipped to this range
    device: str
    dc_offset: float = 0.0  # device units, e.g. mid-scale of an unsigned ADC
    dc_jitter_uv: float = 20.0  # per-channel random DC offset (std)
    muscle_uv: float = 300.0  # RMS of a fully active muscle under an electrode, before the band-pass
    noise_uv: float = 2.0  # amplifier noise RMS
    powerline_uv: float = 5.0  # mean mains amplitude
    motor_units: int = 12  # per muscle
    subject_rotation_deg: float = 45.0  # band rotation between subjects: uniform in +-this
    subject_shift_mm: float = 5.0  # band shift along the forearm between subjects (std)
    session_rotation_deg: float = 5.0  # re-donning rotation between sessions (std)
    synergy_jitter: float = 0.5  # subject-specific perturbation of the shared synergies
    trial_jitter: float = 0.3  # repetition-to-repetition variation of each muscle's weight
    bad_channel_prob: float = 0.1  # chance that a recording has one bad channel
    length_jitter: int = 3  # segment lengths vary by up to this many samples

    def __post_init__(self) -> None:
        counts = (self.n_subjects, self.n_sessions, self.n_reps)
        if self.fs <= 0 or self.gesture_s <= 0 or self.rest_s <= 0 or min(counts) < 1 or self.n_gestures < 2:
            raise ValueError(f"synthetic dataset {self.name!r}: need positive fs, durations and counts, "
                             f"and at least one gesture besides rest")
        if self.adc_range is not None and not self.adc_range[0] < self.adc_range[1]:
            raise ValueError(f"synthetic dataset {self.name!r}: adc_range must be (low, high), got {self.adc_range}")
        self.electrode_layout()  # fail early on a bad layout

    def electrode_layout(self) -> ElectrodeLayout:
        return ElectrodeLayout.from_dict(self.layout)

    @property
    def protocol_seconds(self) -> float:
        """Nominal length of one recording: rest, then every gesture n_reps times, each followed by rest."""
        return (self.n_gestures - 1) * self.n_reps * (self.gesture_s + self.rest_s) + self.rest_s

    def label_names(self) -> dict[int, str]:
        return {g: GESTURE_NAMES[g] if g < len(GESTURE_NAMES) else f"gesture{g}" for g in range(self.n_gestures)}


@dataclass
class SyntheticConfig:
    seed: int = 0
    scale: str = "demo"  # "tiny" (tests), "demo" (a few minutes of pipeline on 2 cores), "full", "large" (scale tests)
    datasets: list[SyntheticDatasetSpec] | None = None  # None => default_datasets(scale)
    # subjects per simulated device instead of the scale's, same protocol: a slice of a scale (or several
    # times it) for memory-scaling benchmarks; only with the default datasets
    subjects: int | None = None

    def __post_init__(self) -> None:
        # numpy's generators refuse negative seeds
        check_ranges(self, seed="[0, inf)", **({"subjects": "[1, inf)"} if self.subjects is not None else {}))
        _scale_protocol(self.scale)
        if self.subjects is not None and self.datasets is not None:
            raise ValueError("synthetic subjects applies to the default datasets; set n_subjects in each dataset instead")


# Protocol size per scale; seconds per recording (SyntheticDatasetSpec.protocol_seconds) =
# (n_gestures - 1) * n_reps * (gesture_s + rest_s) + rest_s.
_SCALES = {
    "tiny": dict(n_subjects=3, n_sessions=1, n_gestures=4, n_reps=2, gesture_s=1.0, rest_s=1.0),  # 13 s
    "demo": dict(n_subjects=5, n_sessions=2, n_gestures=6, n_reps=5, gesture_s=2.0, rest_s=1.5),  # 89 s
    "full": dict(n_subjects=20, n_sessions=3, n_gestures=8, n_reps=10, gesture_s=3.0, rest_s=2.0),  # 352 s
    # scale tests (issue 15): 7 * 21 * 5 + 2 = 737 s per recording (a 12-minute session, so a recording's
    # memory stays that of a real one) x 2 sessions x 64 subjects x 4 devices = 512 recordings,
    # 377,344 s = 104.8 h of EMG from 256 subjects
    "large": dict(n_subjects=64, n_sessions=2, n_gestures=8, n_reps=21, gesture_s=3.0, rest_s=2.0),  # 737 s
}


def _scale_protocol(scale: str) -> dict:
    if scale not in _SCALES:
        raise ValueError(f"synthetic scale must be one of {sorted(_SCALES)}, got {scale!r}")
    return _SCALES[scale]


def default_datasets(scale: str = "demo") -> list[SyntheticDatasetSpec]:
    """Four devices that differ the way public datasets do: rate, layout, units, ADC, mains."""
    protocol = _scale_protocol(scale)
    four_channels = [{"angle_deg": a, "z_mm": z} for a, z in ((20, 10), (110, 25), (200, 10), (290, 25))]
    return [
        SyntheticDatasetSpec(name="synth_myo", fs=200.0, layout={"layout": "ring", "n_channels": 8},
                             units="counts", gain=0.5, powerline_hz=60.0, adc_range=(-128.0, 127.0),
                             device="synthetic Myo-like armband, 8-bit ADC", **protocol),
        SyntheticDatasetSpec(name="synth_3dc", fs=1000.0, layout={"layout": "ring", "n_channels": 10},
                             units="counts", gain=0.5, powerline_hz=60.0, adc_range=(0.0, 1023.0), dc_offset=512.0,
                             device="synthetic 3DC-like armband, unsigned 10-bit ADC", **protocol),
        SyntheticDatasetSpec(name="synth_bipolar4", fs=2048.0, layout={"layout": "custom", "channels": four_channels},
                             units="uV", gain=1.0, powerline_hz=50.0, adc_range=None,
                             device="synthetic 4-channel bipolar amplifier", **protocol),
        SyntheticDatasetSpec(name="synth_hdgrid", fs=2000.0,
                             layout={"layout": "grid", "rows": 8, "cols": 8, "pitch_mm": 10, "z0_mm": -30},
                             units="mV", gain=1e-3, powerline_hz=50.0, adc_range=None,
                             device="synthetic 8x8 high-density grid", **protocol),
    ]


@dataclass(frozen=True)
class SyntheticJob:
    """One recording to generate; small and picklable, so it can be sent to a Ray task."""

    spec: SyntheticDatasetSpec
    subject_index: int
    session_index: int
    seed: int

    @property
    def subject(self) -> str:
        return f"s{self.subject_index + 1:02d}"

    @property
    def session(self) -> str:
        return f"session{self.session_index + 1}"

    @property
    def key(self) -> str:
        return f"{self.spec.name}/{self.subject}/{self.session}"

    def load(self) -> RawRecording:
        return generate_recording(self)


def synthetic_jobs(config: SyntheticConfig) -> list[SyntheticJob]:
    """Every (dataset, subject, session) of the configuration."""
    specs = config.datasets if config.datasets is not None else default_datasets(config.scale)
    if config.subjects is not None:
        specs = [replace(spec, n_subjects=config.subjects) for spec in specs]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"synthetic dataset names must be unique, got {names}")
    return [SyntheticJob(spec, subject, session, config.seed)
            for spec in specs for subject in range(spec.n_subjects) for session in range(spec.n_sessions)]


def generate_recording(job: SyntheticJob) -> RawRecording:
    """The recording of one job (what SyntheticJob.load calls); no ground truth is computed."""
    return _generate(job, with_truth=False)[0]


def generate_recording_with_truth(job: SyntheticJob) -> tuple[RawRecording, np.ndarray]:
    """The recording and its ground truth: (n_samples, n_channels) bool, True where the
    channel's noise-free activation envelope exceeds TRUTH_FRACTION of its own maximum
    (always False on a flat bad channel)."""
    return _generate(job, with_truth=True)  # type: ignore[return-value] - with_truth: never None


def _generate(job: SyntheticJob, with_truth: bool) -> tuple[RawRecording, np.ndarray | None]:
    # Memory: one (samples, channels) float32 array is the recording; the only other array that size is the
    # noise's spectrum, freed before the muscles are simulated; the rest is per muscle, unit or block.
    spec, layout = job.spec, job.spec.electrode_layout()
    subject = _draw_subject(job)
    protocol_rng = _session_rng(job, _PROTOCOL)
    segments = _protocol(spec, protocol_rng)
    n = segments[-1].stop
    decimation = int(np.ceil(MIN_INTERNAL_FS / spec.fs))
    n_fft = fft.next_fast_len(n, real=True)  # FFT-friendly length, trimmed to n below
    # amplifier noise and mains first (their own random stream): the noise's array becomes the recording's,
    # and its spectrum is freed before the muscles' arrays exist
    noise_rng = _session_rng(job, _NOISE)
    line_basis, line_weights = _powerline(spec, noise_rng, n, layout.n_channels)
    emg = _band_noise(noise_rng, n_fft, layout.n_channels, spec.fs)[:n]
    emg *= spec.noise_uv * spec.gain
    dc = spec.dc_offset + spec.gain * spec.dc_jitter_uv * noise_rng.standard_normal(layout.n_channels)
    dc = dc.astype(np.float32)
    broken = bad_channels(job)
    channel_noise = {channel: emg[:, channel].copy() for channel in broken}  # what a "noisy" channel amplifies

    activation = _activations(spec, subject, segments, protocol_rng, spec.fs * decimation, n_fft * decimation)
    trains = _motor_unit_trains(activation, subject, _session_rng(job, _SPIKES), spec.fs * decimation)
    truth_activation = activation[::decimation][:n] if with_truth else None  # at the device rate
    del activation
    sources = _band_limit(trains, spec.fs, n_fft)[:n]  # (n, muscles), unit RMS at full activation
    del trains

    placement = _session_rng(job, _PLACEMENT)
    rotation = subject.rotation_deg + placement.normal(0.0, spec.session_rotation_deg)
    shift = subject.shift_mm + placement.normal(0.0, 2.0)
    contact = placement.lognormal(0.0, 0.1, layout.n_channels)
    mixing = _mixing(layout, subject, rotation, shift)  # (channels, muscles)

    # Muscles and mains are both low-rank in channels: one matrix product, in device units, added to the
    # noise a block of rows at a time (no second (samples, channels) array).
    muscle_weights = mixing.T * (spec.muscle_uv * subject.gain * contact)
    basis = np.hstack([sources, line_basis]).astype(np.float32)
    del sources, line_basis
    weights = (np.vstack([muscle_weights, line_weights]) * spec.gain).astype(np.float32)
    for start in range(0, n, _ROW_BLOCK):
        emg[start:start + _ROW_BLOCK] += basis[start:start + _ROW_BLOCK] @ weights
    del basis
    emg += dc

    truth = _active_channels(truth_activation, mixing) if with_truth else None
    for channel, kind in broken.items():
        _break_channel(emg, channel, kind, spec.adc_range, dc, channel_noise[channel])
        if truth is not None:
            truth[:, channel] &= kind != "flat"
    if spec.adc_range is not None:
        np.clip(np.round(emg, out=emg), *spec.adc_range, out=emg)

    recording = RawRecording(
        dataset=spec.name, subject=job.subject, session=job.session, fs=spec.fs, emg=emg,
        units=spec.units, layout=layout, segments=segments, joins=[], rest_label=REST_LABEL, device=spec.device,
        license="CC0 (synthetic)", source_files=[f"synthetic:{job.key}:seed={job.seed}"],
        adc_range=spec.adc_range, label_names=spec.label_names(),
        notch_hz=(spec.powerline_hz,) if spec.powerline_hz else ())
    return recording, truth


def _active_channels(activation: np.ndarray, mixing: np.ndarray) -> np.ndarray:
    """(samples, channels) bool: the noise-free envelope (activation mixed into each channel) above
    TRUTH_FRACTION of the channel's maximum; computed a block of channels at a time."""
    truth = np.empty((activation.shape[0], mixing.shape[0]), bool)
    for block in _channel_blocks(mixing.shape[0]):
        envelope = activation @ mixing[block].T
        truth[:, block] = envelope > TRUTH_FRACTION * envelope.max(axis=0)
    return truth


def _channel_blocks(channels: int) -> list[slice]:
    """Blocks of _CHANNEL_BLOCK channels. None is one channel wide unless the recording is: numpy reduces a
    single contiguous column in another order (pairwise) than a column of a wider array, and the numbers
    must not depend on the blocks."""
    starts = list(range(0, channels, _CHANNEL_BLOCK))
    if channels > 1 and channels % _CHANNEL_BLOCK == 1:
        starts.pop()  # the last block takes the odd channel
    return [slice(start, stop) for start, stop in zip(starts, starts[1:] + [channels])]


def bad_channels(job: SyntheticJob) -> dict[int, str]:
    """The recording's bad channel, if any: {channel index: one of BAD_CHANNEL_KINDS}."""
    rng = _session_rng(job, _BAD)
    if rng.random() >= job.spec.bad_channel_prob:
        return {}
    return {int(rng.integers(job.spec.electrode_layout().n_channels)): BAD_CHANNEL_KINDS[rng.integers(3)]}


def burst_train(fs: float, n_samples: int, onsets_s, durations_s, snr_db: float,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One channel of band-limited EMG bursts in band-limited noise, for event-detection tests.

    SNR is the mean power of the clean bursts inside their intervals over the mean noise power.
    Returns the float32 signal and the true onset and offset sample indices ([onset, offset)).
    """
    onsets_s, durations_s = np.asarray(onsets_s, dtype=float), np.asarray(durations_s, dtype=float)
    if onsets_s.shape != durations_s.shape or onsets_s.ndim != 1:
        raise ValueError("onsets_s and durations_s must be 1-D sequences of the same length")
    onsets = np.round(onsets_s * fs).astype(int)
    offsets = onsets + np.round(durations_s * fs).astype(int)
    if np.any(offsets <= onsets) or np.any(onsets < 0) or np.any(offsets > n_samples) \
            or np.any(onsets[1:] < offsets[:-1]):
        raise ValueError("bursts must have positive durations, lie inside the signal and not overlap")
    envelope = np.zeros(n_samples)
    ramp = max(1.0, 0.005 * fs)  # 5 ms edges, so a burst does not start with a click
    for onset, offset in zip(onsets, offsets):
        i = np.arange(offset - onset)
        envelope[onset:offset] = np.minimum(1.0, np.minimum(i + 1, offset - onset - i) / ramp)
    rng = np.random.default_rng(seed)
    bursts = _band_noise(rng, n_samples, 1, fs)[:, 0] * envelope
    noise = _band_noise(rng, n_samples, 1, fs)[:, 0]
    if onsets.size:
        inside = envelope > 0
        bursts *= np.sqrt(10 ** (snr_db / 10) * np.mean(noise ** 2) / np.mean(bursts[inside] ** 2))
    return (bursts + noise).astype(np.float32), onsets, offsets


# --- subjects and protocol -------------------------------------------------------------------

@dataclass
class _Subject:
    """Subject-level draws, shared by all sessions of the subject."""

    muscle_angle_deg: np.ndarray  # (muscles,)
    muscle_z_mm: np.ndarray
    muscle_depth_mm: np.ndarray
    synergy: np.ndarray  # (gestures, muscles), row 0 (rest) is zero
    delay: np.ndarray  # (gestures, muscles), recruitment delay as a fraction of the gesture time
    gain: float
    rotation_deg: float
    shift_mm: float
    tremor_hz: float
    mu_threshold: np.ndarray  # (muscles, motor units), activation at recruitment
    mu_amplitude: np.ndarray  # (muscles, motor units)
    mu_width_ms: np.ndarray  # (muscles, motor units), Hermite-Rodriguez time scale
    mu_shape: np.ndarray  # (muscles, motor units), mix of first- and second-order MUAP


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _dataset_id(spec: SyntheticDatasetSpec) -> int:
    return zlib.crc32(spec.name.encode())  # stable across processes, unlike hash()


def _session_rng(job: SyntheticJob, stream: int) -> np.random.Generator:
    return _rng(job.seed, _SESSION, _dataset_id(job.spec), job.subject_index, job.session_index, stream)


def _anatomy(seed: int, n_gestures: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Population muscles (angle, z, depth) and gesture synergies; gesture g's synergy does
    not depend on how many gestures a dataset has."""
    rng = _rng(seed, _ANATOMY)
    angle = 360.0 * np.arange(N_MUSCLES) / N_MUSCLES + rng.normal(0.0, 8.0, N_MUSCLES)
    z = rng.uniform(-10.0, 20.0, N_MUSCLES)
    depth = rng.uniform(6.0, 16.0, N_MUSCLES)
    synergy = np.zeros((n_gestures, N_MUSCLES))
    for gesture in range(1, n_gestures):
        g_rng = _rng(seed, _ANATOMY, gesture)
        synergy[gesture] = g_rng.uniform(0.0, 0.1, N_MUSCLES)
        primary = g_rng.choice(N_MUSCLES, size=int(g_rng.integers(2, 4)), replace=False)
        synergy[gesture, primary] = g_rng.uniform(0.6, 1.0, primary.size)
    return angle, z, depth, synergy


def _draw_subject(job: SyntheticJob) -> _Subject:
    spec = job.spec
    angle, z, depth, synergy = _anatomy(job.seed, spec.n_gestures)
    rng = _rng(job.seed, _SUBJECT, _dataset_id(spec), job.subject_index)
    shape = synergy.shape
    jitter = spec.synergy_jitter
    personal = synergy * rng.lognormal(0.0, jitter, shape) + jitter / 3 * rng.normal(size=shape)
    personal[REST_LABEL] = 0.0
    units = (N_MUSCLES, spec.motor_units)
    size_rank = (np.arange(spec.motor_units) + rng.uniform(0.0, 1.0, units)) / spec.motor_units
    return _Subject(
        muscle_angle_deg=angle + rng.normal(0.0, 5.0, N_MUSCLES),
        muscle_z_mm=z + rng.normal(0.0, 4.0, N_MUSCLES),
        muscle_depth_mm=depth * rng.lognormal(0.0, 0.15, N_MUSCLES),
        synergy=np.clip(personal, 0.0, 1.0),
        delay=rng.uniform(0.0, 0.06, shape),
        gain=float(rng.lognormal(0.0, 0.3)),
        rotation_deg=float(rng.uniform(-spec.subject_rotation_deg, spec.subject_rotation_deg)),
        shift_mm=float(rng.normal(0.0, spec.subject_shift_mm)),
        tremor_hz=float(rng.uniform(8.0, 12.0)),
        # size principle: many small low-threshold units, few large late-recruited ones
        mu_threshold=0.7 * size_rank ** 1.5,
        mu_amplitude=np.exp(2.3 * size_rank),
        mu_width_ms=rng.uniform(1.5, 3.5, units),
        mu_shape=rng.uniform(0.0, 1.0, units),
    )


def _protocol(spec: SyntheticDatasetSpec, rng: np.random.Generator) -> list[Segment]:
    """Rest and gesture alternate; each repetition runs every gesture once in a shuffled order."""
    names = spec.label_names()
    segments: list[Segment] = []
    start = 0

    def add(seconds: float, label: int, rep: int) -> None:
        nonlocal start
        length = int(round(seconds * spec.fs)) + int(rng.integers(-spec.length_jitter, spec.length_jitter + 1))
        segments.append(Segment(start, start + max(length, 1), label, names[label], rep))
        start = segments[-1].stop

    for rep in range(spec.n_reps):
        for label in rng.permutation(np.arange(1, spec.n_gestures)):
            add(spec.rest_s, REST_LABEL, rep)
            add(spec.gesture_s, int(label), rep)
    add(spec.rest_s, REST_LABEL, spec.n_reps - 1)
    return segments


def _activations(spec: SyntheticDatasetSpec, subject: _Subject, segments: list[Segment],
                 rng: np.random.Generator, fs_int: float, n_int: int) -> np.ndarray:
    """(n_int, muscles) activation in [0, 1]: a trapezoid per muscle and gesture segment."""
    activation = np.zeros((n_int, N_MUSCLES))
    decimation = fs_int / spec.fs
    for seg in segments:
        if seg.label == REST_LABEL:
            continue
        start, stop = int(seg.start * decimation), int(seg.stop * decimation)
        length = stop - start  # internal samples; all times below are fractions of it
        onset = rng.uniform(0.03, 0.12) + subject.delay[seg.label]  # reaction time + recruitment order
        rise = rng.uniform(0.08, 0.15, N_MUSCLES)
        release = 1.0 - rng.uniform(0.15, 0.25, N_MUSCLES)
        fall = rng.uniform(0.05, 0.12, N_MUSCLES)
        t = (np.arange(length) / length)[:, None]
        trapezoid = np.clip(np.minimum((t - onset) / rise, (release + fall - t) / fall), 0.0, 1.0)
        execution = rng.uniform(0.6, 1.0) * rng.lognormal(0.0, spec.trial_jitter, N_MUSCLES)  # effort, variability
        activation[start:stop] = execution * subject.synergy[seg.label] * trapezoid
    t = np.arange(n_int) / fs_int
    phase = rng.uniform(0.0, 2 * np.pi, 2)
    modulation = 1.0 + 0.05 * np.sin(2 * np.pi * subject.tremor_hz * t + phase[0]) \
        + 0.05 * np.sin(2 * np.pi * 0.4 * t + phase[1])  # physiological tremor + slow effort drift
    return np.clip(activation * modulation[:, None], 0.0, 1.0)


# --- signal -----------------------------------------------------------------------------------

def _muaps(width_ms: np.ndarray, shape: np.ndarray, fs_int: float) -> np.ndarray:
    """(units, taps) unit-energy MUAPs: a mix of first- and second-order Hermite-Rodriguez."""
    half = int(np.ceil(4 * width_ms.max() * 1e-3 * fs_int))
    x = (np.arange(-half, half + 1) / fs_int * 1e3)[None, :] / width_ms[:, None]
    gauss = np.exp(-x ** 2)
    kernels = (1 - shape[:, None]) * np.sqrt(2) * x * gauss + shape[:, None] * (1 - 2 * x ** 2) * gauss
    return kernels / np.linalg.norm(kernels, axis=1, keepdims=True)


def _motor_unit_trains(activation: np.ndarray, subject: _Subject, rng: np.random.Generator,
                       fs_int: float) -> np.ndarray:
    """(n_int, muscles) sum of each muscle's motor-unit action-potential trains.

    Firing is a gamma renewal process in rescaled time (expected spike count so far), which
    gives rate-coded, quasi-regular spike trains with no loop over samples. Each muscle is
    scaled to unit RMS at full activation (shot-noise power = rate * MUAP energy).
    """
    n_int = activation.shape[0]
    trains = np.zeros_like(activation)
    for m in range(N_MUSCLES):
        threshold, amplitude = subject.mu_threshold[m], subject.mu_amplitude[m]
        drive = activation[:, m]
        kernels = _muaps(subject.mu_width_ms[m], subject.mu_shape[m], fs_int) * amplitude[:, None]
        taps = np.arange(kernels.shape[1]) - kernels.shape[1] // 2
        positions, weights = [], []
        for unit in range(threshold.size):  # one unit's firing clock at a time: (samples,), not (units, samples)
            rate = np.where(drive > threshold[unit], RATE_MIN_HZ + (RATE_MAX_HZ - RATE_MIN_HZ)
                            * (drive - threshold[unit]) / (1 - threshold[unit]), 0.0)
            clock = np.cumsum(rate) / fs_int  # expected spikes so far
            total = clock[-1]
            intervals = rng.gamma(FIRING_REGULARITY, 1 / FIRING_REGULARITY, int(total + 4 * np.sqrt(total) + 10))
            arrivals = rng.uniform() + np.cumsum(intervals)
            spikes = np.searchsorted(clock, arrivals[arrivals < total])
            positions.append((spikes[:, None] + taps).ravel())
            weights.append(np.tile(kernels[unit], spikes.size))
        positions, weights = np.concatenate(positions), np.concatenate(weights)
        inside = (positions >= 0) & (positions < n_int)
        trains[:, m] = np.bincount(positions[inside], weights=weights[inside], minlength=n_int)
        trains[:, m] /= np.sqrt(RATE_MAX_HZ * np.sum(amplitude ** 2) / fs_int)
    return trains


def _band_gain(freqs: np.ndarray, fs: float) -> np.ndarray:
    """Magnitude of the device's analog chain: 2nd-order 20 Hz high-pass, 8th-order low-pass at
    min(450 Hz, 0.4 fs), and a raised-cosine taper to exactly zero at 0.45 fs."""
    high_pass = (freqs / 20.0) ** 2 / np.sqrt(1 + (freqs / 20.0) ** 4)
    low_pass = 1 / np.sqrt(1 + (freqs / min(450.0, 0.4 * fs)) ** 16)
    taper = 0.5 - 0.5 * np.cos(np.pi * np.clip((0.45 * fs - freqs) / (0.03 * fs), 0.0, 1.0))
    return high_pass * low_pass * taper


def _band_limit(x: np.ndarray, fs: float, n: int) -> np.ndarray:
    """Band-pass x (k * n samples at k * fs, along axis 0) and resample it to n samples at fs,
    in one step in the frequency domain."""
    spectrum = fft.rfft(x, axis=0)[: n // 2 + 1]
    gain = _band_gain(np.arange(n // 2 + 1) * fs / n, fs)
    return fft.irfft(spectrum * gain[:, None], n=n, axis=0) * (n / x.shape[0])


def _band_noise(rng: np.random.Generator, n: int, channels: int, fs: float) -> np.ndarray:
    """(n, channels) unit-variance Gaussian noise shaped by the device's band.

    The spectrum's real parts, then its imaginary parts, are drawn a block of bins at a time in the
    order of one (2, bins, channels) draw, so the numbers do not depend on the blocks. The spectrum is
    kept in blocks of channels, each freed once its inverse FFT is in the output: the output and the
    spectrum are never both whole in memory.
    """
    bins = n // 2 + 1
    blocks = _channel_blocks(channels)
    spectra = [np.empty((bins, block.stop - block.start), np.complex64) for block in blocks]
    for part in ("real", "imag"):
        for start in range(0, bins, _ROW_BLOCK):
            drawn = rng.standard_normal((min(_ROW_BLOCK, bins - start), channels), dtype=np.float32)
            for block, spectrum in zip(blocks, spectra):
                getattr(spectrum, part)[start:start + len(drawn)] = drawn[:, block]
    gain = _band_gain(np.arange(bins) * fs / n, fs).astype(np.float32)[:, None]
    noise = np.empty((n, channels), np.float32)
    for block in blocks:
        spectrum = spectra.pop(0)
        spectrum *= gain
        columns = fft.irfft(spectrum, n=n, axis=0)
        del spectrum
        noise[:, block] = columns / columns.std(axis=0)
    return noise


def _mixing(layout: ElectrodeLayout, subject: _Subject, rotation_deg: float, shift_mm: float) -> np.ndarray:
    """(channels, muscles) volume-conductor weights (depth / distance)^2, the distance taken
    around (arc length) and along the forearm from the band's actual position."""
    wrapped = (layout.angle_deg[:, None] + rotation_deg - subject.muscle_angle_deg[None, :] + 180.0) % 360.0 - 180.0
    arc = np.deg2rad(wrapped) * FOREARM_RADIUS_MM
    along = layout.z_mm[:, None] + shift_mm - subject.muscle_z_mm[None, :]
    depth2 = subject.muscle_depth_mm[None, :] ** 2
    return depth2 / (arc ** 2 + along ** 2 + depth2)


def _powerline(spec: SyntheticDatasetSpec, rng: np.random.Generator, n: int,
               channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Mains at powerline_hz and its 3rd harmonic (where the band allows) as a (n, 4) sin/cos
    basis and (4, channels) microvolt weights: a common phase and per-channel amplitudes."""
    amplitude = spec.powerline_uv * rng.uniform(0.5, 1.5, channels)
    phase = rng.uniform(0.0, 2 * np.pi) + rng.normal(0.0, 0.3, channels)
    t = np.arange(n) / spec.fs
    basis, weights = np.zeros((n, 4)), np.zeros((4, channels))
    for i, (harmonic, relative) in enumerate(((1, 1.0), (3, 0.2))):
        if 0 < harmonic * spec.powerline_hz < 0.45 * spec.fs:  # sin(wt + p) = sin(wt) cos(p) + cos(wt) sin(p)
            omega_t = 2 * np.pi * harmonic * spec.powerline_hz * t
            basis[:, 2 * i], basis[:, 2 * i + 1] = np.sin(omega_t), np.cos(omega_t)
            weights[2 * i], weights[2 * i + 1] = relative * amplitude * np.cos(harmonic * phase), \
                relative * amplitude * np.sin(harmonic * phase)
    return basis, weights


def _break_channel(emg: np.ndarray, channel: int, kind: str, adc_range: tuple[float, float] | None,
                   dc: np.ndarray, channel_noise: np.ndarray) -> None:
    """Make one channel bad in place (device units, before ADC rounding)."""
    if kind == "flat":  # a disconnected lead: only the offset remains
        emg[:, channel] = dc[channel]
    elif kind == "noisy":  # a loose contact: the channel's own amplifier noise, much amplified
        emg[:, channel] += BAD_NOISE_FACTOR * channel_noise
    elif adc_range is not None:  # clipped: a gain fault drives the converter into its rails
        emg[:, channel] = dc[channel] + BAD_CLIP_GAIN * (emg[:, channel] - dc[channel])
    else:  # clipped: a saturating amplifier, 5 % of samples at each rail
        low, high = np.percentile(emg[:, channel], [5, 95])
        emg[:, channel] = np.clip(emg[:, channel], low, high)
