import numpy as np
import pytest

from aemg_dist.config import ConfigError, load_config, save_config
from preprocessing.errors import ManifestError
from preprocessing.geometry import ElectrodeLayout
from preprocessing.harmonize import HarmonizeConfig

LAYOUTS = [
    ({"layout": "ring"}, 8),
    ({"layout": "ring", "channels": [{"angle_deg": a} for a in range(0, 360, 36)]}, 10),
    ({"layout": "grid", "rows": 8, "cols": 8, "pitch_mm": 10}, 64),
    ({"layout": "custom", "channels": [{"angle_deg": 0, "z_mm": 0}, {"angle_deg": 0, "z_mm": 30},
                                       {"angle_deg": 90, "z_mm": 0}, {"angle_deg": 180, "z_mm": 15}]}, 4),
]


@pytest.mark.parametrize("spec,n", LAYOUTS)
def test_distinct_electrodes_get_distinct_positions(spec, n):
    layout = ElectrodeLayout.from_dict(spec, n_channels=n)
    coords = layout.canonical_coordinates()
    assert coords.shape == (n, 3)
    gaps = np.linalg.norm(coords[:, None] - coords[None, :], axis=-1) + np.eye(n) * 1e9
    assert gaps.min() > 1e-3
    assert np.allclose(np.hypot(coords[:, 0], coords[:, 1]), 1)  # on the unit cylinder
    again = ElectrodeLayout.from_dict(layout.to_dict(), n_channels=n)  # what the corpus stores reloads as is
    assert np.allclose(again.positions(), layout.positions())


def test_grid_rows_run_along_the_forearm_and_columns_around_it():
    layout = ElectrodeLayout.from_dict({"layout": "grid", "rows": 2, "cols": 3, "pitch_mm": 10, "circumference_mm": 360})
    assert layout.z_mm.tolist() == [0, 0, 0, 10, 10, 10]
    assert layout.angle_deg.tolist() == [0, 10, 20, 0, 10, 20]
    assert layout.row.tolist() == [0, 0, 0, 1, 1, 1] and layout.col.tolist() == [0, 1, 2, 0, 1, 2]


def test_ring_angles_are_equally_spaced():
    assert ElectrodeLayout.from_dict({"layout": "ring"}, n_channels=8).angle_deg.tolist() == list(range(0, 360, 45))


@pytest.mark.parametrize("spec,n,match", [
    ({"layout": "ring"}, 0, "at least one"),
    ({"layout": "hexagon"}, 8, "must be one of"),
    ({"layout": "grid", "rows": 8}, 64, "cols"),
    ({"layout": "ring", "n_channels": 8}, 10, "8 channels but the data has 10"),
    ({"layout": "custom", "channels": [{"angle_deg": 10}, {"angle_deg": 10}]}, 2, "same position"),
    ({"layout": "custom", "channels": [{"z_mm": 10}]}, 1, "angle_deg"),
])
def test_bad_layouts_are_refused(spec, n, match):
    with pytest.raises(ManifestError, match=match):
        ElectrodeLayout.from_dict(spec, n_channels=n)


def test_config_merge_order_and_saved_copy(tmp_path):
    yaml = tmp_path / "h.yaml"
    yaml.write_text("target_fs: 2000\nhighpass_hz: 10\n")
    config = load_config(HarmonizeConfig, yaml, ["highpass_hz=15"])
    assert (config.target_fs, config.highpass_hz, config.lowpass_hz) == (2000.0, 15.0, 450.0)
    saved = save_config(config, tmp_path / "run" / "config.yaml")
    assert load_config(HarmonizeConfig, saved) == config


@pytest.mark.parametrize("overrides,match", [
    (["no_such_key=1"], "no_such_key"),
    (["target_fs=fast"], "target_fs"),
    (["target_fs=-5"], "target_fs"),
    (["target_fs"], "key=value"),
])
def test_bad_configs_fail_with_the_culprit_named(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(HarmonizeConfig, None, overrides)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(HarmonizeConfig, tmp_path / "nope.yaml")


def test_a_readme_config_path_resolves_to_the_shipped_config_outside_the_checkout(tmp_path, monkeypatch):
    """`--config configs/pretrain/tiny.yaml` names the shipped config wherever the command runs; a file of that name
    in the working directory wins, and a name the project does not ship still fails naming it."""
    from aemg_dist.config import config_path, shipped_configs
    from aemg_dist.train import load_pretrain_config

    monkeypatch.chdir(tmp_path)
    assert config_path("configs/pretrain/tiny.yaml") == shipped_configs() / "pretrain" / "tiny.yaml"
    assert load_pretrain_config("configs/pretrain/tiny.yaml").model.d_model == \
        load_pretrain_config(shipped_configs() / "pretrain" / "tiny.yaml").model.d_model
    (tmp_path / "configs" / "pretrain").mkdir(parents=True)
    (tmp_path / "configs" / "pretrain" / "tiny.yaml").write_text("optim:\n  max_steps: 7\n")
    assert load_pretrain_config("configs/pretrain/tiny.yaml").optim.max_steps == 7  # the user's own file
    with pytest.raises(ConfigError, match="configs/pretrain/nothing.yaml does not exist"):
        load_pretrain_config("configs/pretrain/nothing.yaml")


@pytest.mark.parametrize("name", ["tiny", "real"])
def test_every_shipped_pretraining_config_loads_and_differs_from_the_preset_only_where_it_says(name):
    """A shipped pretraining config is valid as shipped (a typo in a key fails here, not in a user's run); real.yaml,
    issue 14's recipe, keeps tiny's model and only lengthens the run and sets the sweep's codebook and mask."""
    from aemg_dist.config import shipped_configs
    from aemg_dist.train import load_pretrain_config

    config = load_pretrain_config(shipped_configs() / "pretrain" / f"{name}.yaml", ["dist.ray=false"])
    tiny = load_pretrain_config(shipped_configs() / "pretrain" / "tiny.yaml", ["dist.ray=false"])
    assert config.preset == "tiny" and config.model.d_model == tiny.model.d_model
    if name == "real":
        assert (config.model.codebook_size, config.model.mask_ratio) == (256, 0.3)
        assert config.optim.max_steps == 30_000  # ten times the sweep's 3,000 steps, as RESULTS measured it
