"""Content-addressed artifact directories, atomic writes and manifests.

Every artifact lives under a directory named by a hash of its inputs and config, is
written atomically (temp file, fsync, rename) and carries `manifest.json` with its
inputs, config, versions, runtime (torch threads), seed, timings and the sha256 of each
file it holds, so a truncated or corrupted file is detected and rebuilt rather than loaded.

Files and folders get the permissions the process umask gives (`tempfile` would make them
private), so a runs root can be shared with a team, a Prefect server or workers. Builders
of the same directory take a lock beside it (`.NAME.lock` while held, see `stage_lock`), so
two runs of one config never remove or overwrite each other's work.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
LOCK_SUFFIX = ".lock"


def process_umask() -> int:
    """The process umask, read without changing it (`os.umask` can only be read by setting
    it, which races with threads creating files meanwhile)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # no /proc (not Linux): set and restore at once
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """The mode `open()` would give a new file (0644 under umask 022)."""
    return 0o666 & ~process_umask()


def dir_mode() -> int:
    """The mode `mkdir` would give a new folder (0755 under umask 022)."""
    return 0o777 & ~process_umask()


# what a write can fail with that the user must fix (not maskshare): the advice for each
WRITE_ERRNOS = {
    errno.ENOSPC: "free some space (`maskshare runs clean --older-than DAYS --yes` deletes old "
                  "runs) or point runs_dir / MASKSHARE_CACHE at another disk",
    errno.EDQUOT: "free some of your quota or point runs_dir / MASKSHARE_CACHE elsewhere",
    errno.EACCES: "make it writable for you or point runs_dir / MASKSHARE_CACHE at a folder "
                  "you can write",
    errno.EPERM: "make it writable for you or point runs_dir / MASKSHARE_CACHE at a folder "
                 "you can write",
    errno.EROFS: "the file system is read-only: point runs_dir / MASKSHARE_CACHE at a "
                 "writable one",
}
_OS_ERROR = re.compile(r"os error (\d+)")


class WriteError(OSError):
    """A write that failed for a reason the user must fix (a full disk, no permission, a
    read-only file system), naming what could not be written: `filename`. Nothing
    half-written is left: the temp files and folders are removed; finished outputs stay."""

    def __str__(self) -> str:
        advice = WRITE_ERRNOS.get(self.errno, "fix that")
        return (f"cannot write {self.filename}: {self.strerror}; {advice}, then rerun: "
                "finished stages are kept")


def write_failure(exc: BaseException, path: str | Path) -> WriteError | None:
    """`exc` as a WriteError naming `path` if it is a write failure the user must fix (an
    OSError, or a library's error that carries an OS error number, as polars' do)."""
    if isinstance(exc, WriteError):
        return exc
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None and (m := _OS_ERROR.search(str(exc))):
        code = int(m.group(1))
    if code not in WRITE_ERRNOS:
        return None
    return WriteError(code, os.strerror(code), str(path))


def make_temp_dir(final_dir: str | Path) -> Path:
    """A dot-named temp folder beside `final_dir` (its parents created), with `dir_mode()`."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", dir=final_dir.parent))
    os.chmod(tmp, dir_mode())  # mkdtemp makes it 0700
    return tmp


def apply_umask_modes(directory: str | Path) -> None:
    """Give `directory` and everything in it the modes the umask allows. Some writers make
    private files whatever the umask (safetensors' `save_file`, so also sae_lens' and
    transformers' `save_*`), which would hide them from the rest of a team."""
    fmode, dmode = file_mode(), dir_mode()
    for p in [Path(directory), *Path(directory).rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, dmode if p.is_dir() else fmode)


def lock_path(final_dir: str | Path) -> Path:
    final_dir = Path(final_dir)
    return final_dir.parent / f".{final_dir.name}{LOCK_SUFFIX}"


def lock_is_held(final_dir: str | Path) -> bool:
    """Whether a process holds `stage_lock(final_dir)` now. A read-only probe: it creates
    and removes nothing (a lock file left by a killed holder is free)."""
    import fcntl

    try:
        fd = os.open(lock_path(final_dir), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


_held = threading.local()  # lock paths this thread holds -> depth (re-entrancy)


@contextlib.contextmanager
def stage_lock(final_dir: str | Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock of `final_dir` (an empty file `.NAME.lock` beside it) across processes.

    Wrap "check complete -> build -> rename" in it: a second builder waits, then finds the
    first's complete result. Re-entrant within a thread (the stage runner holds it around
    `building`, which takes it again); other threads and processes wait. Yields True once
    held; with `wait=False` yields False at once if someone else holds it.

    The lock file is removed on release, while still held, so listings of a run (`glob`)
    never see it. That is safe because filelock (>= 4.3) checks after each flock that the
    file it locked still has a name (st_nlink > 0) and otherwise retries on a fresh file: a
    waiter that had opened the removed file cannot hold it alongside a newcomer.
    """
    from filelock import FileLock, Timeout

    path = lock_path(final_dir)
    depth: dict[str, int] = _held.__dict__.setdefault("depth", {})
    key = str(path.absolute())
    if depth.get(key):
        depth[key] += 1
        try:
            yield True
        finally:
            depth[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, mode=file_mode())
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        yield False
        return
    depth[key] = 1
    try:
        yield True
    finally:
        depth.pop(key, None)
        try:
            with contextlib.suppress(OSError):
                path.unlink()  # while held: see the docstring
        finally:
            lock.release()


def stable_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def hash_config(*parts: Any, length: int = 16) -> str:
    """Hash of JSON-serialisable parts (configs, input hashes)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(stable_json(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:length]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it and rename it into place."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
            # mkstemp makes it 0600 (owner only), and a writer may have replaced the file
            # with its own private temp (safetensors does): set the mode last
            os.fchmod(f.fileno(), file_mode())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except Exception as e:
        if (w := write_failure(e, path)) is not None and w is not e:
            raise w from e
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_tensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically with a byte-reproducible header.

    safetensors stores `metadata` from a hash map, so its key order (and the file's bytes and
    sha256) changes from save to save; the header's metadata is rewritten with sorted keys
    (same length: only the order changes), so equal inputs give equal files."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    if metadata:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text.rstrip()) == len(data[8:8 + n].rstrip()):
            data = data[:8] + text.ljust(n) + data[8 + n:]
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("maskshare", "torch", "transformer-lens", "sae-lens", "scikit-learn", "polars"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def runtime() -> dict[str, Any]:
    """What the process computed with, beyond the package versions, where torch is loaded:
    its intra-op thread count and the CPU vector kernels it dispatches to (`AVX2`,
    `AVX512`, ...). Mask training is bit-reproducible on the same thread count and kernels,
    not across them (float sums split differently; docs/selection.md), so a manifest says
    which it used."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    return {"torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def write_manifest(directory: str | Path, *, inputs: Any = None, config: Any = None,
                   seed: int | None = None, timings: dict[str, float] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `manifest.json` listing the sha256 of every other file in `directory`."""
    directory = Path(directory)
    files = {
        str(p.relative_to(directory)): file_sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    manifest = {
        "inputs": inputs, "config": config, "seed": seed, "timings": timings or {},
        "versions": versions(), "runtime": runtime(), "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra or {}),
    }
    write_json_atomic(directory / MANIFEST, manifest)
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    p = Path(directory) / MANIFEST
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def is_complete(directory: str | Path, *, verify_hashes: bool = True) -> bool:
    """True if `directory` has a manifest and every file it lists matches its hash."""
    directory = Path(directory)
    m = read_manifest(directory)
    if m is None:
        return False
    for rel, digest in m.get("files", {}).items():
        p = directory / rel
        if not p.is_file():
            return False
        if verify_hashes and file_sha256(p) != digest:
            return False
    return True


@contextlib.contextmanager
def building(final_dir: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Build an artifact directory in a sibling temp dir, then rename it into place.

    Nothing is visible at `final_dir` until the body (which must write the manifest)
    succeeds. If another process finished the same artifact meanwhile, its result is kept;
    with `replace`, an existing folder is replaced instead (moved aside, then removed, so
    `final_dir` is whole at every moment). The swap into place runs under
    `stage_lock(final_dir)`, so an incomplete `final_dir` is only ever removed by the one
    builder holding the lock.
    """
    final_dir = Path(final_dir)
    tmp = old = None
    try:
        tmp = make_temp_dir(final_dir)
        yield tmp
        apply_umask_modes(tmp)
        with stage_lock(final_dir):
            if final_dir.exists():
                if replace:
                    old = final_dir.with_name(f".{final_dir.name}.old.{os.getpid()}")
                    os.replace(final_dir, old)
                elif is_complete(final_dir):
                    return  # a concurrent build of the same inputs won; keep it
                else:
                    shutil.rmtree(final_dir)  # corrupt or partial: no builder is using it
            try:
                os.replace(tmp, final_dir)
            except OSError:
                if is_complete(final_dir):
                    return  # a builder that takes no lock finished meanwhile
                raise
            _fsync_dir(final_dir.parent)
    except Exception as e:  # a write inside names the stage's folder, not its temp copy
        if (w := write_failure(e, final_dir)) is not None:
            raise WriteError(w.errno, w.strerror, str(final_dir)) from e
        raise
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
