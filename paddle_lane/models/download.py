"""Pretrained weights by path or URL, checked before a run claims its folder.

A URL is downloaded once into a cache (PADDLE_LANE_WEIGHTS_CACHE, default
~/.cache/paddle-lane/weights/<hash of the URL>/), to a temp file renamed into place only when
complete and non-empty, so a failed download leaves nothing a later run would load (paddleseg's
helper left a lock file that made other ranks wait forever). Archives (.tar, .tar.gz, .tgz,
.zip) are unpacked and must hold exactly one .pdparams file."""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from paddle_lane.core.errors import UserError

DOWNLOAD_TIMEOUT_S = 60  # per socket operation: a stalled server is an error, not a hang
ARCHIVES = (".tar", ".tar.gz", ".tgz", ".zip")


def is_url(path: str) -> bool:
    return bool(urlparse(str(path)).netloc)


def cache_root() -> Path:
    return Path(os.environ.get("PADDLE_LANE_WEIGHTS_CACHE", Path.home() / ".cache" / "paddle-lane" / "weights"))


def fetch_weights(path: str, key: str = "weights") -> str:
    """A local .pdparams file for `path` (a file, a checkpoint folder or a URL); a missing file
    (FileNotFoundError) or a failed download (UserError) is one line naming `key` and the path."""
    path = str(path)
    if is_url(path):
        return _download(path, key)
    local = os.path.join(path, "model.pdparams") if os.path.isdir(path) else path
    if not os.path.isfile(local):
        raise FileNotFoundError(f"{key}: weights file not found: {local}")
    return local


def _download(url: str, key: str) -> str:
    name = Path(unquote(urlparse(url).path)).name or "model.pdparams"
    folder = cache_root() / hashlib.sha256(url.encode()).hexdigest()[:16]
    done = folder / "weights.path"  # written last: names the .pdparams of a complete download
    if done.exists() and (folder / done.read_text().strip()).is_file():
        return str(folder / done.read_text().strip())
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download.", dir=folder) as tmp:
        target = Path(tmp) / name
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(target, "wb") as fh:
                shutil.copyfileobj(response, fh, 1 << 20)
        except urllib.error.HTTPError as exc:
            raise UserError(f"{key}: cannot download {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise UserError(f"{key}: cannot download {url}: {getattr(exc, 'reason', exc)}") from None
        if target.stat().st_size == 0:
            raise UserError(f"{key}: {url} answered an empty file")
        weights = _unpack(target, Path(tmp), url, key) if name.endswith(ARCHIVES) else target
        final = folder / weights.name
        os.replace(weights, final)
        done_tmp = Path(tmp) / "weights.path"
        done_tmp.write_text(final.name)
        os.replace(done_tmp, done)
    return str(final)


def _unpack(archive: Path, tmp: Path, url: str, key: str) -> Path:
    """The single .pdparams inside an archive."""
    out = tmp / "unpacked"
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(out)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(out, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{key}: {url} is not a readable archive ({exc})") from None
    found = sorted(out.rglob("*.pdparams"))
    if len(found) != 1:
        raise UserError(f"{key}: {url} holds {len(found)} .pdparams files; expected exactly one")
    return found[0]
