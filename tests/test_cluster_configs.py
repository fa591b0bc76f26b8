"""cluster/ stays valid: every YAML parses, the launcher config passes Ray's own schema, the KubeRay
manifests carry the fields the operator needs and their pod templates pass the Kubernetes schema
(offline), and every aemg command in the guide parses."""

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

from aemg_dist.cli import build_parser
from aemg_dist.jobs import entrypoint
from aemg_dist.train import load_pretrain_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
IMAGE_WORKDIR = "/home/ray/aemg-dist"  # WORKDIR of cluster/Dockerfile
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def _containers(pod_template):
    return pod_template["spec"]["containers"]


def _env(container):
    return {e["name"]: e for e in container.get("env", [])}


def test_every_yaml_parses_to_mappings():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert {f.name for f in files} >= {"aws.yaml", "raycluster.yaml", "rayjob.yaml", "kustomization.yaml"}
    for f in files:
        docs = list(yaml.safe_load_all(f.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), f


def test_launcher_config_passes_rays_schema_with_a_cpu_head_and_gpu_workers():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load("aws.yaml")
    config = prepare_config(raw)  # merges the provider defaults, as `ray up` does (no cloud calls)
    validate_config(config)  # raises on any field the launcher does not know
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] >= 1 for t in workers)
    # the checkout reaches every node and is installed there, without the virtualenv or runs
    assert raw["file_mounts"]["~/aemg-dist"] == "."
    assert ".gitignore" in raw["rsync_filter"]
    assert any("pip install" in c and "-e" in c and "aemg-dist[cloud]" in c for c in raw["setup_commands"])
    # token authentication on every node
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in raw[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    assert "~/.ray/auth_token" in raw["file_mounts"]


def test_raycluster_has_a_cpu_head_gpu_workers_and_token_auth():
    cluster = _load("kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert DNS_1123.match(cluster["metadata"]["name"])
    assert cluster["spec"]["rayVersion"] == ray.__version__  # clients and cluster must run the same Ray
    head = cluster["spec"]["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # the CRD wants strings
    head_container = _containers(head["template"])[0]
    assert "nvidia.com/gpu" not in head_container["resources"].get("limits", {})
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265}
    groups = cluster["spec"]["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert DNS_1123.match(group["groupName"])
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = _containers(group["template"])[0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert container["image"] == head_container["image"]
    for container in [head_container, *(_containers(g["template"])[0] for g in groups)]:
        env = _env(container)
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "aemg-ray-token"


def test_rayjob_targets_the_raycluster_with_a_valid_aemg_command():
    cluster, job = _load("kuberay/raycluster.yaml"), _load("kuberay/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert DNS_1123.match(job["metadata"]["name"])
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    argv = shlex.split(job["spec"]["entrypoint"])
    args = build_parser().parse_args(argv[1:])
    assert argv[0] == "aemg" and args.command == "pretrain"
    entrypoint(argv, installed=True)  # paths are absolute or URIs, as aemg submit demands
    # the config named inside the image is this checkout's file, and the whole command is a valid config
    config = Path(args.config.replace(IMAGE_WORKDIR, str(ROOT)))
    assert config.is_file()
    cfg = load_pretrain_config(config, args.overrides)
    assert cfg.run.out.startswith("s3://") and cfg.data.tokens.startswith("s3://")
    submitter = _containers(job["spec"]["submitterPodTemplate"])[0]
    assert submitter["image"].startswith("rayproject/ray:" + ray.__version__)
    assert _env(submitter)["RAY_AUTH_MODE"]["value"] == "token"


def test_dockerfile_copies_every_package_onto_the_matching_ray_image():
    lines = [line.split() for line in (CLUSTER / "Dockerfile").read_text().splitlines() if line and line[0] != "#"]
    base = next(words[1] for words in lines if words[0] == "FROM")
    assert base.startswith(f"rayproject/ray:{ray.__version__}-")
    assert next(words[1] for words in lines if words[0] == "WORKDIR") == IMAGE_WORKDIR
    copied = [src for words in lines if words[0] == "COPY" for src in words[1:-1] if not src.startswith("--")]
    assert copied and all((ROOT / src).exists() for src in copied), copied
    # every folder a package of the wheel is built from (pyproject.toml's packages, mapped by package-dir) is in the
    # image, with what the build reads
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {setuptools.get("package-dir", {}).get(p, p.replace(".", "/")) for p in setuptools["packages"]}
    missing = sorted(f for f in folders if not any(f == src or f.startswith(f"{src}/") for src in copied))
    assert not missing, f"cluster/Dockerfile does not copy {missing}"
    assert {"pyproject.toml", "README.md"} <= set(copied)
    assert not any("-e" in words for words in lines if words[0] == "RUN"), "install the package, not editable"


def test_every_pod_template_passes_the_kubernetes_schema():
    validator = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (the dev extra)")
    cluster, job = _load("kuberay/raycluster.yaml"), _load("kuberay/rayjob.yaml")
    templates = {"head": cluster["spec"]["headGroupSpec"]["template"],
                 **{g["groupName"]: g["template"] for g in cluster["spec"]["workerGroupSpecs"]},
                 "submitter": job["spec"]["submitterPodTemplate"]}
    for name, template in templates.items():
        # the CRDs embed core PodTemplateSpecs: validate each as a v1 PodTemplate, unknown fields refused
        validator.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template},
                           "1.33.0", strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_raycluster_offline():
    built = subprocess.run(["kubectl", "kustomize", str(CLUSTER / "kuberay")], capture_output=True, text=True,
                           check=True, timeout=60).stdout
    docs = list(yaml.safe_load_all(built))
    assert [d["kind"] for d in docs] == ["RayCluster"]
    images = {c["image"] for d in docs for c in _containers(d["spec"]["headGroupSpec"]["template"])}
    assert images == {"aemg-dist:0.1.0"}


def test_every_aemg_command_in_the_guide_parses():
    text = (CLUSTER / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    # the aemg part of each line: no comment, nothing piped after it
    commands = [line.split("  #")[0].split(" | ")[0].strip() for block in blocks for line in block.splitlines()
                if line.startswith("aemg ")]
    assert len(commands) >= 6
    parser = build_parser()
    for command in commands:
        argv = shlex.split(command.replace("$RUN", "/shared/run"))
        args, extra = parser.parse_known_args(argv[1:])
        assert all("=" in e for e in extra), command
        if args.command == "submit":
            inner = args.aemg_command[1:] if args.aemg_command[:1] == ["--"] else args.aemg_command
            parser.parse_known_args(inner[1:])
            entrypoint(inner, installed=args.installed)
    # every file the guide links or applies exists
    for path in re.findall(r"cluster/[\w./-]+\.(?:yaml|md)|cluster/Dockerfile", text):
        assert (ROOT / path).exists(), path
