"""Latency of one real-time decision (`aemg predict --stream`) for the tiny and small presets, on one core.

    python benchmarks/bench_predict_latency.py [--presets tiny,small] [--devices synth_myo,synth_hdgrid]

A personal decoder is built per (preset, device) with random weights (latency does not depend on what the
weights learned) and the statistics of the first 20 % of a synthetic demo recording of that device (what
calibration would give). The whole recording is then fed as the live stream would deliver it, one hop
(0.25 s of raw samples) per call, and each call is timed: causal filtering and resampling of the hop,
tokenizing the last 0.5 s window (online event detection against the stored floor) and the model's forward
pass. p50 / p99 over the decisions, after the first second (warm-up): wall-clock time, and the thread's CPU
time, which leaves out the time the process waited for a core (on a shared machine the wall-clock tail is
mostly that wait).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # single-core numbers, whatever the BLAS build

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aemg_dist.config import load_config  # noqa: E402
from aemg_dist.decoder import Decoder, DecoderConfig  # noqa: E402
from aemg_dist.evaluation.classifiers import AEMGClassifier  # noqa: E402
from aemg_dist.events import EventConfig, envelope, noise_floor  # noqa: E402
from aemg_dist.model import AEMGModel, ModelConfig, param_count  # noqa: E402
from aemg_dist.stream import StreamDecoder  # noqa: E402
from aemg_dist.tokens import TokenConfig, feature_names  # noqa: E402
from preprocessing.harmonize import HarmonizeConfig, denormalize, harmonize  # noqa: E402
from preprocessing.synthetic import SyntheticConfig, generate_recording, synthetic_jobs  # noqa: E402


def decoder_for(preset: str, raw) -> Decoder:
    """A decoder with random weights and the statistics of the recording's first 20 % (its 'calibration')."""
    cfg = load_config(ModelConfig, ROOT / "configs" / "model" / f"{preset}.yaml",
                      [f"n_features={len(feature_names(TokenConfig()))}"])
    torch.manual_seed(0)
    model = AEMGClassifier(AEMGModel(cfg), len(raw.label_names))
    rec = harmonize(raw, HarmonizeConfig())
    calibration = denormalize(rec.emg[: rec.emg.shape[0] // 5], rec.center, rec.scale)
    center = np.median(calibration, axis=0)
    scale = 1.4826 * np.median(np.abs(calibration - center), axis=0)
    floor = noise_floor(envelope(((calibration - center) / scale).astype(np.float32), rec.fs, EventConfig())[0],
                        EventConfig())
    config = DecoderConfig(model=cfg, class_ids=sorted(raw.label_names), class_names=list(raw.label_names.values()),
                           source_fs=raw.fs, coords=raw.layout.canonical_coordinates().tolist(), center=center.tolist(),
                           scale=scale.tolist(), floor=floor.tolist(), channel_ok=[True] * raw.n_channels,
                           notch_hz=list(raw.notch_hz), units=raw.units, electrodes=raw.layout.to_dict())
    return Decoder(model, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--devices", default="synth_myo,synth_hdgrid")
    args = parser.parse_args()
    torch.set_num_threads(1)
    jobs = {j.spec.name: j for j in synthetic_jobs(SyntheticConfig(scale="demo")) if j.subject_index == 0
            and j.session_index == 0}
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    print("| preset | parameters | device | channels | decisions | wall p50 ms | wall p99 ms | CPU p50 ms | CPU p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for device in args.devices.split(","):
        raw = generate_recording(jobs[device])
        for preset in args.presets.split(","):
            decoder = decoder_for(preset, raw)
            stream = StreamDecoder(decoder)
            hop = int(round(decoder.config.hop_s * raw.fs))
            times, cpu = [], []
            for start in range(0, raw.n_samples - hop + 1, hop):
                began, began_cpu = time.perf_counter(), time.thread_time()
                decisions = stream.feed(raw.emg[start:start + hop])
                elapsed, elapsed_cpu = time.perf_counter() - began, time.thread_time() - began_cpu
                if decisions.end_s.size and decisions.end_s[0] >= 1.0:  # after the first second's warm-up
                    times.append(elapsed * 1e3)
                    cpu.append(elapsed_cpu * 1e3)
            (p50, p99), (c50, c99) = np.percentile(times, [50, 99]), np.percentile(cpu, [50, 99])
            print(f"| {preset} | {param_count(decoder.config.model) / 1e6:.2f} M | {device} | {raw.n_channels} | "
                  f"{len(times)} | {p50:.1f} | {p99:.1f} | {c50:.1f} | {c99:.1f} |", flush=True)


if __name__ == "__main__":
    main()
