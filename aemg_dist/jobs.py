"""`aemg submit` and `aemg jobs`: run aemg commands on a Ray cluster through Ray's job submission API.

`aemg submit --address http://HEAD:8265 -- aemg pretrain ...` uploads this checkout as the job's
working directory (Ray leaves out what .gitignore lists: .venv, runs, ...) and runs the command there
with `python -m aemg_dist.cli`, so the cluster runs exactly the code you have; `--installed` runs the
`aemg` the cluster's image or setup commands installed instead, with nothing uploaded. The job id is
printed, the logs are followed, and the exit status is the job's (0 succeeded, 1 failed or stopped).

Token authentication: the client sends the token when RAY_AUTH_MODE=token is set, taking it from
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (Ray's own rules).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from aemg_dist import storage
from aemg_dist.commands import CommandError, format_table, subcommand
from preprocessing.errors import first_line

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Path-valued arguments of aemg commands. On a cluster a relative path resolves inside the job's
# uploaded working directory (a temporary folder on the head node), never where the user meant.
PATH_OPTIONS = ("--corpus", "--out", "--config", "--checkpoint", "--manifest", "--source")
PATH_KEYS = ("data.tokens", "data.extra_tokens", "run.out", "run.init_from")  # extra_tokens: a [list] of paths
NO_AGENT = "No available agent to submit job"  # the job server's answer until the head's job agent is up
AGENT_WAIT_S = 120.0


def submission_client(address: str | None) -> Any:
    """A JobSubmissionClient for `address` (or $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS), as a CommandError if unreachable."""
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise CommandError("give --address http://HEAD:8265 (the Ray dashboard / job server of the cluster)")
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise CommandError(f"cannot reach the Ray job server at {address}: {first_line(err)}") from None


def entrypoint(command: Sequence[str], installed: bool) -> str:
    """The shell command the job runs for `aemg ...`."""
    if not command or command[0] != "aemg":
        raise CommandError("the command after -- must be an aemg command, e.g. -- aemg pretrain --config ...")
    _check_paths(command[1:], uploaded=not installed)
    # the uploaded checkout is the job's working directory; `python -m` imports it rather than an installed copy
    program = ["aemg"] if installed else ["python", "-m", "aemg_dist.cli"]
    return shlex.join([*program, *command[1:]])


def _check_paths(args: Sequence[str], uploaded: bool) -> None:
    """Refuse relative output/input paths, which would land in the job's temporary working directory.

    With an uploaded working directory, a relative --config inside the checkout is fine (it is uploaded).
    """
    for name, value in _path_arguments(args):
        if "://" in value:
            storage.check_scheme(value)  # a URI, on shared storage: fine unless no filesystem knows its scheme
            continue
        if not value or Path(value).is_absolute():
            continue
        if name == "--source" and "/" not in value:
            continue  # a dataset name (3dc, synthetic), not a path
        if uploaded and name in ("--config", "--manifest") and (PROJECT_ROOT / value).is_file():
            continue
        shown = f"{name}={value}" if name in PATH_KEYS else f"{name} {value}"
        raise CommandError(f"{shown} is a relative path: on the cluster it would resolve inside the job's "
                           "temporary working directory; give an absolute path on shared storage or an s3:// / gs:// URI")


def _path_arguments(args: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(option or key, path) of every path-valued argument; a list key (data.extra_tokens=[a,b]) gives each path."""
    for i, arg in enumerate(args):
        if arg in PATH_OPTIONS and i + 1 < len(args):
            yield arg, args[i + 1]
        elif "=" in arg and arg.split("=", 1)[0] in PATH_KEYS:
            name, value = arg.split("=", 1)
            if value.startswith("[") and value.endswith("]"):
                yield from ((name, item.strip().strip("'\"")) for item in value[1:-1].split(",") if item.strip())
            else:
                yield name, value


def runtime_env(installed: bool, env: Sequence[str]) -> dict[str, Any]:
    """Working directory (this checkout) unless `installed`, plus KEY=VALUE environment variables."""
    bad = [e for e in env if "=" not in e]
    if bad:
        raise CommandError(f"--env takes KEY=VALUE, got {bad}")
    result: dict[str, Any] = {"env_vars": dict(e.split("=", 1) for e in env)} if env else {}
    if not installed:
        if not (PROJECT_ROOT / "pyproject.toml").is_file():
            raise CommandError(f"{PROJECT_ROOT} is not a checkout of the project; use --installed to run the "
                               "cluster's installed aemg")
        # .gitignore'd paths (.venv, runs, data) are left out by Ray; .git is not needed on the cluster
        result.update(working_dir=str(PROJECT_ROOT), excludes=[".git"])
    return result


def follow(client: Any, job_id: str) -> str:
    """Print the job's logs as they come until it ends; returns its final status name."""
    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except RuntimeError as err:  # the log stream closed early (e.g. the head restarted): fall back to polling
        print(f"(log stream ended: {first_line(err)}; waiting for the job to finish)", flush=True)
    status = client.get_job_status(job_id)
    while not status.is_terminal():
        time.sleep(2)
        status = client.get_job_status(job_id)
    return str(status.value)


def submit(client: Any, job: dict[str, Any], agent_wait_s: float = AGENT_WAIT_S) -> str:
    """client.submit_job(**job), retried while the head's job agent is still starting (a head that has just come
    up, or a busy one, answers "No available agent to submit job" for a while); other refusals at once."""
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as err:  # refused by the job server (duplicate id, upload failed, bad runtime env)
            if NO_AGENT not in str(err) or time.monotonic() > deadline:
                raise CommandError(f"the job server refused the job: {first_line(err)}") from None
            time.sleep(2)


def cmd_submit(args: argparse.Namespace) -> int:
    command = list(args.aemg_command)
    if command[:1] == ["--"]:
        command = command[1:]
    job = {"entrypoint": entrypoint(command, args.installed), "runtime_env": runtime_env(args.installed, args.env) or None,
           "submission_id": args.submission_id}
    client = submission_client(args.address)
    job_id = submit(client, job)
    print(f"submitted {job_id} to {args.address or 'the cluster'}", flush=True)
    if args.no_wait:
        print(f"follow it with: aemg jobs logs {job_id} --follow")
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; {job_id} keeps running (aemg jobs stop {job_id} ends it)")
        return 130
    print(f"job {job_id} {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    client = submission_client(args.address)
    if args.action == "list":
        rows = [{"submission_id": j.submission_id or j.job_id, "status": str(j.status.value),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "",
                 "entrypoint": j.entrypoint if len(j.entrypoint) <= 80 else j.entrypoint[:77] + "..."}
                for j in sorted(client.list_jobs(), key=lambda j: j.start_time or 0)]
        print(format_table(rows))
        return 0
    if not args.job_id:
        raise CommandError(f"aemg jobs {args.action} needs a job id (see aemg jobs list)")
    try:
        if args.action == "stop":
            stopped = client.stop_job(args.job_id)
            print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
            return 0
        if args.follow:
            status = follow(client, args.job_id)
            print(f"job {args.job_id} {status}")
            return 0 if status == "SUCCEEDED" else 1
        print(client.get_job_logs(args.job_id), end="")
        return 0
    except RuntimeError as err:  # unknown job id, or the request failed
        raise CommandError(f"{args.job_id}: {first_line(err)}") from None


def add_commands(sub: Any) -> None:
    """Register `aemg submit` and `aemg jobs` on the aemg subparsers."""
    address_help = "Ray job server, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS)"
    p = subcommand(
        sub, "submit", "run an aemg command on a Ray cluster (job submission API)",
        "Submit an aemg command as a Ray job: this checkout is uploaded as its working directory (or, with "
        "--installed, the cluster's own aemg runs), the job id is printed, its logs are followed, and the exit "
        "status is the job's. Paths must be absolute on shared storage or URIs (s3://, gs://): relative ones "
        "would resolve inside the job's temporary working directory.",
        ["aemg submit --address http://127.0.0.1:8265 -- aemg pretrain --config configs/pretrain/tiny.yaml "
         "data.tokens=s3://bucket/tokens run.out=s3://bucket/runs/tiny",
         "aemg submit --address http://127.0.0.1:8265 --installed -- aemg tokenize --corpus s3://bucket/corpus.zarr "
         "--out s3://bucket/tokens",
         "aemg submit --no-wait --env AWS_REGION=us-west-2 -- aemg pretrain --config configs/pretrain/tiny.yaml "
         "run.out=/shared/runs/tiny"])
    p.add_argument("--address", help=address_help)
    p.add_argument("--installed", action="store_true",
                   help="run the aemg installed on the cluster (image / setup commands); upload nothing")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the job")
    p.add_argument("--submission-id", help="job id to use (default: chosen by Ray)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return without following the logs")
    p.add_argument("aemg_command", nargs=argparse.REMAINDER, metavar="-- aemg COMMAND ...", help="the aemg command to run")
    p.set_defaults(func=cmd_submit)

    p = subcommand(
        sub, "jobs", "list, show logs of, or stop jobs on a Ray cluster",
        "list: every job with its status; logs ID: its output (--follow until it ends, exit status = the "
        "job's); stop ID: ask Ray to stop it.",
        ["aemg jobs list --address http://127.0.0.1:8265",
         "aemg jobs logs raysubmit_XYZ --follow --address http://127.0.0.1:8265",
         "aemg jobs stop raysubmit_XYZ --address http://127.0.0.1:8265"])
    p.add_argument("action", choices=["list", "logs", "stop"])
    p.add_argument("job_id", nargs="?", help="submission id (for logs and stop)")
    p.add_argument("--follow", action="store_true", help="logs: follow until the job ends")
    p.add_argument("--address", help=address_help)
    p.set_defaults(func=cmd_jobs)
