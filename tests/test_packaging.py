"""The package as pyproject.toml describes it: every package folder listed, and a wheel that works outside the checkout.

The wheel test builds from a copy of what the image context holds (pyproject.toml, README.md and the package folders,
as cluster/Dockerfile copies them), installs it into a fresh virtual environment in tmp_path without any download
(the dependencies come from this interpreter's site-packages through a .pth directory line, which adds the folder but
runs none of the .pth files in it, so the editable install's finder, and with it the checkout, stays out), and runs
the `aemg` console script and the public API from a working directory outside the checkout.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def package_folders(root: Path = ROOT) -> dict[str, Path]:
    """{package: folder} as pyproject.toml builds them: the listed packages, mapped by package-dir."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = setuptools.get("package-dir", {})
    return {name: root / mapped.get(name, name.replace(".", "/")) for name in setuptools["packages"]}


def test_every_package_folder_of_the_checkout_is_listed():
    folders = package_folders()
    assert all(folder.is_dir() for folder in folders.values()), folders
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("aemg_dist", "preprocessing", "tuning")
             for p in (ROOT / top).rglob("__init__.py")}
    assert found <= set(folders), f"package folders missing from pyproject.toml's packages: {sorted(found - set(folders))}"
    assert {p.relative_to(ROOT / "configs").parts[0] for p in (ROOT / "configs").rglob("*.yaml")} >= {"model", "pretrain"}


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    shown = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert shown.returncode == 0, f"{' '.join(map(str, args))}:\n{shown.stdout[-2000:]}\n{shown.stderr[-3000:]}"
    return shown.stdout


@pytest.mark.slow  # 2 min on 2 busy cores (build, venv, prepare, tokenize, a 3-step pretraining)
@pytest.mark.claim("an installed wheel finds the presets without a checkout")
def test_the_wheel_runs_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    source = tmp_path / "source"  # a copy: a build in the checkout would leave build/ there, and could reuse its files
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in {f.relative_to(ROOT).parts[0] for f in package_folders().values()}:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(tmp_path / "dist"), str(source)], tmp_path, env)
    wheel = next((tmp_path / "dist").glob("aemg_dist-*.whl"))

    venv = tmp_path / "venv"
    _run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        tmp_path, env).strip())
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], tmp_path, env)

    work = tmp_path / "work"
    work.mkdir()
    assert "usage: aemg" in _run([str(venv / "bin" / "aemg"), "--help"], work, env)
    # every model preset and every shipped pretraining config through the public API, from the installed package
    loaded = json.loads(_run([str(python), "-c", """
import json, aemg_dist
from aemg_dist.artifacts import model_preset_names
from aemg_dist.config import shipped_configs
from aemg_dist.train import load_pretrain_config
from preprocessing.manifest import shipped_manifests
configs = sorted(str(p) for p in (shipped_configs() / "pretrain").glob("*.yaml"))
models = {(c, name): load_pretrain_config(c, [f"preset={name}"]).model.d_model
          for c in configs for name in model_preset_names()}
print(json.dumps({"package": aemg_dist.__file__, "configs": str(shipped_configs()), "pretrain": configs,
                  "presets": model_preset_names(), "models": len(models), "manifests": sorted(shipped_manifests())}))
"""], work, env))
    assert Path(loaded["package"]).is_relative_to(venv) and Path(loaded["configs"]).is_relative_to(venv), loaded
    assert {"tiny", "small", "base"} <= set(loaded["presets"]) and loaded["pretrain"], loaded
    assert loaded["models"] == len(loaded["presets"]) * len(loaded["pretrain"]) and "3dc" in loaded["manifests"]
    # a tiny demo stage: prepare, tokenize and pretrain a few steps without Ray, with the shipped tiny config named as
    # the README names it (configs/pretrain/tiny.yaml, which does not exist in this working directory)
    aemg = str(venv / "bin" / "aemg")
    _run([aemg, "prepare", "--source", "synthetic", "--scale", "tiny", "--out", "corpus.zarr", "--workers", "1",
          "--quiet"], work, env)
    _run([aemg, "tokenize", "--corpus", "corpus.zarr", "--out", "tokens", "--workers", "1", "--quiet"], work, env)
    assert not (work / "configs").exists()
    _run([aemg, "pretrain", "--config", "configs/pretrain/tiny.yaml", "--no-ray", "data.tokens=tokens", "run.out=run", "optim.max_steps=3",
          "data.batch_size=8", "run.log_every=1"], work, env)
    assert (work / "run" / "export" / "model.safetensors").is_file()
