"""The README's "adding a dataset" example works as written."""

import re
from pathlib import Path

import numpy as np

from preprocessing.harmonize import harmonize
from preprocessing.manifest import DatasetManifest, manifest_jobs

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_manifest_example_reads_a_dataset_laid_out_as_described(tmp_path):
    text = README.read_text()
    block = re.search(r"write `mylab.yaml`:\n\n```yaml\n(.*?)```", text, re.S).group(1)
    manifest_path = tmp_path / "mylab.yaml"
    manifest_path.write_text(block)
    rng = np.random.default_rng(0)
    for subject in ("07", "08"):
        folder = tmp_path / "data" / "MyLab" / f"subj{subject}" / "day2"
        folder.mkdir(parents=True)
        for rep in range(2):
            for label in range(6):
                rows = rng.integers(-500, 500, size=(700, 8))
                np.savetxt(folder / f"rep{rep}_gesture{label}.csv", rows, fmt="%d", delimiter=",", header="c0,c1,c2,c3,c4,c5,c6,c7", comments="")
    jobs = manifest_jobs(DatasetManifest.from_yaml(manifest_path), tmp_path / "data")
    assert sorted(job.key for job in jobs) == ["mylab/07/2", "mylab/08/2"]
    raw = jobs[0].load()
    assert raw.emg.shape == (12 * 700, 8) and len(raw.segments) == 12 and len(raw.joins) == 11
    assert {s.label_name for s in raw.segments} == {"rest", "fist", "open", "pinch", "point", "wave"}
    assert harmonize(raw).emg.shape == (12 * 700, 8)
