"""Paths that may be URIs: corpus, token shards, checkpoints and results live on a local disk, a shared
mount, or an object store (`s3://`, `gs://`, anything fsspec knows).

Everything goes through fsspec: a local path stays a local path; `s3://` needs s3fs (the `cloud`
extra), `gs://` needs gcsfs (untested here). Endpoints and credentials come from the usual environment
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), so an S3-compatible store (MinIO, a local emulator) needs
no code. Ray Train resolves checkpoint URIs with its own pyarrow filesystems from the same variables.

On a multi-node Ray cluster every node must see the same files: `require_shared` refuses a local
path that some node cannot see, with a one-line reason. Files that must be appended to or need a local
path (metrics, trial rows, plots) are written in a `StagedFolder` and uploaded whole; a folder read by
code that needs local files (an exported model) is fetched once per node by `local_copy`.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import fsspec

from aemg_dist.errors import ConfigError


# Where storage endpoints, regions and credential files are configured. Ray workers run in the
# cluster's environment, not the driver's, so a driver that starts or joins Ray hands these to its
# job (`parallel.ensure_ray`). Secrets are not handed on (Ray shows runtime environments in its
# dashboard): point AWS_SHARED_CREDENTIALS_FILE at a file, or give the nodes an instance profile /
# service account. Jobs sent with `aemg submit` take their environment from `--env`.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                 "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "GOOGLE_APPLICATION_CREDENTIALS")


class StorageError(ConfigError):
    """A path cannot serve as asked (e.g. a local path on a multi-node cluster); a config error, so
    the command line reports it in one line."""


def is_uri(path: str | Path) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def absolute(path: str | Path) -> str:
    """URIs as given, local paths made absolute (workers do not share the driver's working directory)."""
    return str(path).rstrip("/") if is_uri(path) else str(Path(path).resolve())


def join(base: str | Path, *names: str) -> str:
    if is_uri(base):
        return posixpath.join(str(base).rstrip("/"), *names)
    return str(Path(base, *names))


def check_scheme(path: str | Path) -> None:
    """Refuse a URI whose scheme no fsspec filesystem knows (a typo such as `s4://`), naming it."""
    if is_uri(path):
        scheme = str(path).split("://", 1)[0]
        if scheme not in fsspec.available_protocols():
            raise StorageError(f"{path}: unknown URI scheme {scheme!r}; give a local path or a URI fsspec knows "
                               "(s3://, gs://, ...)")


def filesystem(path: str | Path) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a local path or URI."""
    check_scheme(path)
    # no listing cache: other processes (Ray workers) write the folders this process lists
    options = {"use_listings_cache": False} if is_uri(path) else {}
    try:
        return fsspec.core.url_to_fs(str(path), **options)
    except ImportError as err:  # e.g. s3:// without s3fs
        raise StorageError(f"{path}: {err} (install the project's `cloud` extra for s3://)") from None


def exists(path: str | Path) -> bool:
    fs, inner = filesystem(path)
    return fs.exists(inner)


def isdir(path: str | Path) -> bool:
    fs, inner = filesystem(path)
    return fs.isdir(inner)


def size(path: str | Path) -> int:
    """Bytes of a file."""
    fs, inner = filesystem(path)
    return int(fs.size(inner))


def makedirs(path: str | Path) -> None:
    fs, inner = filesystem(path)
    fs.makedirs(inner, exist_ok=True)  # a no-op on object stores, where folders are key prefixes


def read_text(path: str | Path) -> str:
    fs, inner = filesystem(path)
    with fs.open(inner, "r") as f:
        return f.read()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Whole-file write that readers never see half done: a local temporary file renamed into place;
    an object store's single upload is atomic by itself."""
    if not is_uri(path):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
        return
    fs, inner = filesystem(path)
    fs.pipe_file(inner, data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def listdir(folder: str | Path, suffix: str = "") -> list[str]:
    """Sorted full paths (URIs keep their scheme) of the files directly in `folder` ending in `suffix`;
    names starting with "." (temporary files) are left out."""
    fs, inner = filesystem(folder)
    if not fs.isdir(inner):
        return []
    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(inner, detail=False)]
    return sorted(join(folder, n) for n in names if n.endswith(suffix) and not n.startswith("."))


def upload(local: str | Path, remote: str | Path) -> None:
    """Copy a local file or folder to `remote` (same layout), replacing what is there."""
    fs, inner = filesystem(remote)
    if Path(local).is_dir():
        fs.put(str(local).rstrip("/") + "/", inner, recursive=True)
    else:
        fs.put_file(str(local), inner)


def download(remote: str | Path, local: str | Path) -> bool:
    """Copy a remote file to `local`; False when it does not exist."""
    fs, inner = filesystem(remote)
    if not fs.exists(inner):
        return False
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    fs.get_file(inner, str(local))
    return True


def local_copy(folder: str | Path) -> Path:
    """A local path to read `folder` from: itself when local; for a URI, a copy in this node's cache (the
    system temporary folder), named by the URI and the version of each of its files, so the tasks of one node
    download it once and a folder rewritten since is fetched again."""
    if not is_uri(folder):
        return Path(folder)
    fs, inner = filesystem(folder)
    files = sorted(fs.find(inner))
    if not files:
        raise FileNotFoundError(f"{folder} does not exist or is empty")
    # fsspec's checksum changes whenever a file's content may have (an S3 ETag, a modification time)
    version = hashlib.sha256("\n".join([absolute(folder), *(str(fs.checksum(f)) for f in files)]).encode()).hexdigest()
    cache = Path(tempfile.gettempdir()) / "aemg-cache"
    target = cache / f"{posixpath.basename(inner.rstrip('/'))}-{version[:16]}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(dir=cache, prefix=".fetch-")
    try:
        fs.get(inner.rstrip("/") + "/", staging, recursive=True)
        os.rename(staging, target)  # whole or not at all, for the other tasks of this node
    except OSError:
        if not target.is_dir():  # else another task of this node was first, and its copy is the same
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class StagedFolder:
    """Where a process writes the files of the folder `out`: `out` itself when it is a local path; for a URI, a
    local temporary folder whose files `fetch` brings down and `sync` uploads. Object stores cannot append and
    plotting libraries want local files; each upload is of a whole file, which readers never see half done."""

    def __init__(self, out: str | Path):
        self.out = str(out)
        self.remote = is_uri(out)
        self.local = Path(tempfile.mkdtemp(prefix="aemg-stage-")) if self.remote else Path(out)

    @property
    def path(self) -> Path | str:
        """The folder as callers should name it: the URI, or the local folder."""
        return self.out if self.remote else self.local

    def fetch(self, name: str) -> None:
        """Bring down OUT/name when it exists (e.g. to append to it)."""
        if self.remote:
            download(join(self.out, name), self.local / name)

    def sync(self, *names: str) -> None:
        """Upload each local file or folder `name` (missing ones are skipped) to OUT/name."""
        for name in names if self.remote else ():
            if (self.local / name).exists():
                upload(self.local / name, join(self.out, name))

    def close(self) -> None:
        """Drop the local copy of a URI folder (what mattered is uploaded by then)."""
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)


def zarr_store(path: str | Path, read_only: bool) -> Any:
    """A zarr v3 store for a local folder or a URI."""
    from zarr.storage import FsspecStore, LocalStore

    check_scheme(path)
    if not is_uri(path):
        return LocalStore(str(path), read_only=read_only)
    return FsspecStore.from_url(str(path), read_only=read_only)


def forwarded_env() -> dict[str, str]:
    """The storage settings of this process's environment (FORWARDED_ENV) that are set."""
    return {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}


def require_shared(path: str | Path, what: str) -> None:
    """Refuse a local `path` that some node of the connected Ray cluster cannot see.

    URIs pass. A local path passes on one node, or when every node finds a marker file the driver
    writes there (an NFS mount, or several nodes on one machine).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if is_uri(path):
        return
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".aemg-shared-{uuid.uuid4().hex}"
    marker.touch()
    try:
        probe = ray.remote(num_cpus=0)(os.path.exists)
        seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                        .remote(str(marker)) for node in nodes])
    finally:
        marker.unlink()
    if not all(seen):
        raise StorageError(f"{what}={path} is a local path that {seen.count(False)} of the {len(nodes)} nodes of "
                           "this cluster cannot see; multi-node runs need shared storage: an s3:// or gs:// URI, "
                           "or a folder every node mounts (NFS)")
