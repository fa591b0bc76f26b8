"""`aemg submit` / `aemg jobs`: entrypoints, runtime environments, refused paths, and (slow) real two-node
Ray clusters on this machine: the guide's local recipe run as written, and a local path that one node
cannot see refused in one line."""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from aemg_dist.cli import CommandError, main
from aemg_dist.jobs import PROJECT_ROOT, entrypoint, runtime_env

GUIDE = PROJECT_ROOT / "cluster" / "README.md"
VENV_BIN = Path(sys.executable).parent


def test_uploaded_checkout_runs_through_python_m_and_installed_through_aemg():
    command = ["aemg", "pretrain", "--config", "configs/pretrain/tiny.yaml", "run.out=s3://b/run", "data.tokens=/shared/t"]
    assert entrypoint(command, installed=False) == \
        "python -m aemg_dist.cli pretrain --config configs/pretrain/tiny.yaml run.out=s3://b/run data.tokens=/shared/t"
    with pytest.raises(CommandError, match="--config configs/pretrain/tiny.yaml is a relative path"):
        entrypoint(command, installed=True)  # nothing uploaded: the cluster's cwd is not this checkout
    assert entrypoint(["aemg", "tokenize", "--corpus", "gs://b/c.zarr", "--out", "/nfs/t"], installed=True) == \
        "aemg tokenize --corpus gs://b/c.zarr --out /nfs/t"
    assert shlex.split(entrypoint(["aemg", "pretrain", "run.out=/a b/c"], installed=True))[-1] == "run.out=/a b/c"
    assert entrypoint(["aemg", "pretrain", "data.extra_tokens=[/nfs/t,s3://b/t]"], installed=True) == \
        "aemg pretrain 'data.extra_tokens=[/nfs/t,s3://b/t]'"


@pytest.mark.parametrize("command,match", [
    (["aemg", "pretrain", "run.out=runs/x"], "run.out=runs/x is a relative path"),
    (["aemg", "tokenize", "--corpus", "/c.zarr", "--out", "tokens"], "--out tokens is a relative path"),
    (["aemg", "pretrain", "--config", "no/such.yaml"], "--config no/such.yaml is a relative path"),
    # each path of a list key is checked: the second one here is relative
    (["aemg", "pretrain", "data.extra_tokens=[/nfs/synth, runs/synth]"], "data.extra_tokens=runs/synth is a relative"),
    (["python", "train.py"], "must be an aemg command"),
    ([], "must be an aemg command"),
])
def test_commands_that_cannot_work_on_a_cluster_are_refused(command, match):
    with pytest.raises(CommandError, match=match):
        entrypoint(command, installed=False)


def test_runtime_env_uploads_the_checkout_with_the_given_variables():
    env = runtime_env(False, ["AWS_REGION=us-west-2", "A=b=c"])
    assert env["working_dir"] == str(PROJECT_ROOT) and ".git" in env["excludes"]
    assert env["env_vars"] == {"AWS_REGION": "us-west-2", "A": "b=c"}
    assert runtime_env(True, []) == {}
    with pytest.raises(CommandError, match="KEY=VALUE"):
        runtime_env(True, ["AWS_REGION"])


def test_submit_waits_for_the_job_agent_and_refuses_anything_else_at_once(monkeypatch):
    from aemg_dist import jobs

    class Client:
        def __init__(self, errors: list[str]):
            self.errors, self.calls = errors, 0

        def submit_job(self, **job):
            self.calls += 1
            if self.errors:
                raise RuntimeError(self.errors.pop(0))
            return "raysubmit_1"

    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    busy = f"Request failed with status code 500: {jobs.NO_AGENT}, please try again later."
    starting = Client([busy, busy])
    assert jobs.submit(starting, {"entrypoint": "x"}) == "raysubmit_1" and starting.calls == 3
    duplicate = Client(["Job with submission_id tiny already exists", busy])
    with pytest.raises(CommandError, match="refused the job: Job with submission_id tiny already exists"):
        jobs.submit(duplicate, {"entrypoint": "x"})
    assert duplicate.calls == 1
    with pytest.raises(CommandError, match=jobs.NO_AGENT):  # no agent for longer than the wait
        jobs.submit(Client([busy]), {"entrypoint": "x"}, agent_wait_s=-1)


def test_cli_errors_are_one_line_with_exit_status_2(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert main(["submit", "--", "aemg", "pretrain", "run.out=runs/x"]) == 2
    assert main(["jobs", "list"]) == 2
    assert main(["jobs", "list", "--address", f"http://127.0.0.1:{_free_port()}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": error: ")[0] for line in lines] == ["aemg submit", "aemg jobs", "aemg jobs"]
    assert "relative path" in lines[0] and "give --address" in lines[1] and "cannot reach" in lines[2]


# ---------------------------------------------------------------- the guide's two-node recipe

def _recipe() -> list[str]:
    text = GUIDE.read_text()
    block = re.search(r"## Try it on one machine.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("   #")[0].rstrip() for line in block.splitlines() if line.strip()]


AGENT_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
               "metrics-export-port")
RECIPE_PORT = re.compile(r"(?<=-port=)\d+|(?<=127\.0\.0\.1:)\d+")


def _on_free_ports(lines: list[str]) -> tuple[list[str], dict[int, int]]:
    """The recipe with each port it names that is in use on this machine replaced by a free one, and those."""
    ports = {int(port) for line in lines for port in RECIPE_PORT.findall(line)}
    moved = {port: _free_port() for port in sorted(ports) if _port_in_use(port)}
    return [RECIPE_PORT.sub(lambda m: str(moved.get(int(m.group()), m.group())), line) for line in lines], moved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _processes_with(marker: str) -> list[int]:
    """Pids whose environment holds our marker: the nodes and everything they started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # gone, or not ours
                continue
    return pids


def _stop(nodes: list[subprocess.Popen], marker: str) -> None:
    """SIGTERM each `ray start --block` (it stops its node), then SIGKILL whatever carries our marker."""
    for node in reversed(nodes):
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGTERM)
    deadline = time.time() + 30
    while time.time() < deadline and (any(n.poll() is None for n in nodes) or _processes_with(marker)):
        time.sleep(0.5)
    for pid in _processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for node in nodes:
        node.wait(timeout=30)


def _active_nodes(env: dict, address: str) -> int:
    out = subprocess.run(["ray", "status", f"--address={address}"], env=env, capture_output=True, text=True,
                         timeout=60).stdout
    active = out.split("Active:")[1].split("Pending:")[0] if "Active:" in out else ""
    return len(re.findall(r"node_[0-9a-f]+", active))


def test_every_node_of_the_guides_recipe_has_its_own_ports():
    starts = [line for line in _recipe() if line.startswith("ray start")]
    assert len(starts) == 2
    for line in starts:  # a default port (the agent's 52365) is held by any other Ray on the machine
        missing = [name for name in AGENT_PORTS if f"--{name}=" not in line]
        assert not missing, f"{line}: no {missing}"
    ports = [port for line in starts for port in re.findall(r"-port=(\d+)", line)]
    assert len(ports) == len(set(ports)) == 2 + 2 * len(AGENT_PORTS)  # and the head's --port, --dashboard-port


@pytest.mark.slow
@pytest.mark.claim("a two-node cluster on one machine (cluster/README.md), run as written")
def test_the_guides_two_node_recipe_trains_on_both_nodes(tmp_path):
    lines, moved = _on_free_ports(_recipe())
    if moved:  # held by something else running on this machine: the recipe runs on others instead
        print(f"recipe ports in use here, replaced: {moved}")
    head = next(line for line in lines if line.startswith("ray start --head"))
    gcs, dashboard = (int(re.search(rf"--{name}=(\d+)", head).group(1)) for name in ("port", "dashboard-port"))
    marker = f"AEMG_TEST_CLUSTER_{uuid.uuid4().hex}"
    ray_tmp = tempfile.mkdtemp(prefix="aemg-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    # the test's own run folder and Ray temp dir; everything else as the guide says
    pinned = {"RUN": str(tmp_path / "run"), "RAY_TMP": ray_tmp}
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", marker: "1"}
    nodes: list[subprocess.Popen] = []
    outputs: dict[str, str] = {}
    try:
        for line in lines:
            if line.startswith("source "):
                continue  # PATH above already puts the virtualenv first
            if line.startswith("export "):
                shown = subprocess.run(["bash", "-c", f"{line} && env -0"], env=env, cwd=PROJECT_ROOT,
                                       capture_output=True, check=True).stdout.decode()
                env = dict(item.split("=", 1) for item in shown.split("\0") if "=" in item)
                if env.get("RAY_TMP", ray_tmp) != ray_tmp:  # the guide's own temp dir, replaced by the test's
                    shutil.rmtree(env["RAY_TMP"], ignore_errors=True)
                env.update(pinned)
                continue
            if line.startswith("kill %"):
                # before the nodes go, every job has ended (a stop request takes a moment to land)
                listing = next(command for command in lines if command.startswith("aemg jobs list"))
                _wait(lambda: not re.search(r"\b(PENDING|RUNNING)\b", _run(listing, env).stdout), 120,
                      "every job to end")
                outputs["final jobs list"] = _run(listing, env).stdout
                _stop(nodes, marker)
                continue
            if line.endswith("&"):
                log = (tmp_path / f"node{len(nodes)}.log").open("w")
                nodes.append(subprocess.Popen(["bash", "-c", f"exec {line[:-1]}"], env=env, cwd=PROJECT_ROOT,
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
                if len(nodes) == 1:  # the second node needs the head's GCS to join
                    _wait(lambda: _port_in_use(gcs) and _port_in_use(dashboard), 90, "the head node to start")
                continue
            _wait(lambda: _active_nodes(env, f"127.0.0.1:{gcs}") == 2, 90, "two active nodes")
            done = _run(line, env)
            outputs[line] = done.stdout + done.stderr
            assert done.returncode == 0, f"{line}\n{outputs[line][-3000:]}"
    except TimeoutError as error:  # a node that did not come up: say why
        raise TimeoutError("\n".join([str(error), *(f"{log.name}: ...{log.read_text()[-2000:]}"
                                                    for log in sorted(tmp_path.glob("node*.log")))])) from None
    finally:
        _stop(nodes, marker)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not _processes_with(marker)
    run = Path(pinned["RUN"])
    followed = [out for line, out in outputs.items() if line.startswith("aemg submit") and "--no-wait" not in line]
    assert len(followed) == 2 and all(re.search(r"job \S+ SUCCEEDED", out) for out in followed)
    logs = next(out for line, out in outputs.items() if line.startswith("aemg jobs logs"))
    assert "pretrained 20 steps" in logs
    assert "long-pretrain: stop requested" in next(out for line, out in outputs.items() if "jobs stop" in line)
    statuses = dict(re.findall(r"^(\S+)\s+(PENDING|RUNNING|STOPPED|SUCCEEDED|FAILED)\b", outputs["final jobs list"], re.M))
    assert statuses["tiny-pretrain"] == "SUCCEEDED" and statuses["long-pretrain"] == "STOPPED"
    assert sorted(statuses.values()) == ["STOPPED", "SUCCEEDED", "SUCCEEDED"]
    ranks = [json.loads((run / "pretrain" / "workers" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert len({r["node_id"] for r in ranks}) == 2  # one training worker on each node
    assert sorted((run / "pretrain" / "ray").glob("checkpoint_*"))
    assert (run / "pretrain" / "export" / "model.safetensors").exists()
    rows = (run / "pretrain" / "metrics.csv").read_text().splitlines()
    assert rows[-1].split(",")[0] == "20"


@pytest.mark.slow
@pytest.mark.claim("a local path that some node of a multi-node cluster cannot see is refused (README)")
@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare")
def test_a_local_path_that_one_node_cannot_see_is_refused_in_one_line(tmp_path):
    if subprocess.run(["unshare", "-m", "--propagation", "private", "true"]).returncode:
        pytest.skip("private mount namespaces are not allowed here")
    from preprocessing.prepare import prepare
    from preprocessing.synthetic import SyntheticConfig, synthetic_jobs

    corpus, hidden = tmp_path / "corpus.zarr", tmp_path / "hidden"
    hidden.mkdir()
    assert prepare([j for j in synthetic_jobs(SyntheticConfig(scale="tiny")) if j.subject_index == 0], corpus,
                   workers=1, progress=False).ok
    marker = f"AEMG_TEST_CLUSTER_{uuid.uuid4().hex}"
    ray_tmp = tempfile.mkdtemp(prefix="aemg-ray-", dir="/tmp")
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", marker: "1",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    gcs = _free_port()

    def node(*options: str) -> list[str]:  # each node with its own agent ports: both run on this machine
        ports = [f"--{name}={_free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                          "runtime-env-agent-port", "metrics-export-port")]
        return ["ray", "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
                *ports, *options]

    head = node("--head", f"--port={gcs}", "--include-dashboard=false", f"--temp-dir={ray_tmp}")
    # the second node sees an empty tmpfs where the driver's folder is: a local disk it does not share
    second = ["unshare", "-m", "--propagation", "private", "sh", "-c", f'mount -t tmpfs tmpfs "{hidden}" && exec "$@"',
              "sh", *node(f"--address=127.0.0.1:{gcs}")]
    nodes: list[subprocess.Popen] = []
    try:
        for i, command in enumerate((head, second)):
            log = (tmp_path / f"node{i}.log").open("w")
            nodes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            if i == 0:  # the second node needs the head's GCS to join
                _wait(lambda: _port_in_use(gcs), 90, "the head node to start")
        _wait(lambda: _active_nodes(env, f"127.0.0.1:{gcs}") == 2, 90, "two active nodes")
        done = subprocess.run([sys.executable, "-m", "aemg_dist.cli", "tokenize", "--corpus", str(corpus), "--out",
                               str(hidden / "tokens"), "--address", f"127.0.0.1:{gcs}", "--quiet"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        _stop(nodes, marker)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not _processes_with(marker)
    assert done.returncode == 2, done.stderr[-3000:]
    # the corpus is seen by both nodes and passes; the output folder is named, with what to do instead
    assert done.stderr.strip().splitlines()[-1] == (
        f"aemg tokenize: error: --out={hidden / 'tokens'} is a local path that 1 of the 2 nodes of this cluster "
        "cannot see; multi-node runs need shared storage: an s3:// or gs:// URI, or a folder every node mounts (NFS)")


def _run(line: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise TimeoutError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(1)
