"""Files named by URL (`s3://bucket/data/*.jsonl`, `gs://...`, `hf://...`) through
fsspec: `read` sources, `decontaminate` benchmark files and export targets
(docs/storage.md). A leaf module: paths, context, the read stage and the exporter
use it, and it imports none of them.

Credentials come only from each filesystem's own environment and config (AWS_*
variables and ~/.aws for s3fs, AWS_ENDPOINT_URL for an S3-compatible server,
GOOGLE_APPLICATION_CREDENTIALS for gcsfs, ...), or from SMOLFORGE_STORAGE_OPTIONS
(JSON: protocol -> fsspec storage options). Never from a recipe: a URL holding a
user or password is refused, and nothing here writes options anywhere.

`file://` URLs are local paths (`local_path`), so they keep every local rule
(symlinks resolved, the allowed folders)."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
OPTIONS_ENV = "SMOLFORGE_STORAGE_OPTIONS"
# The filesystem package a protocol needs, for the error when it is missing.
_PACKAGES = {"s3": "s3fs (pip install 'smolforge[s3]')", "s3a": "s3fs (pip install 'smolforge[s3]')",
             "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "hf": "huggingface_hub"}


class RemoteError(ValueError):
    """A URL that cannot be used (bad form, missing filesystem package, bad options)."""


def scheme(value: str) -> str | None:
    """The URL scheme of `value` (lower case), None for a plain path."""
    m = _SCHEME.match(value)
    return m.group(1).lower() if m else None


def is_remote(value: object) -> bool:
    """A URL read through fsspec: any scheme but `file`."""
    return isinstance(value, str) and scheme(value) not in (None, "file")


def local_path(value: str) -> str:
    """`file:///data/x.jsonl` -> `/data/x.jsonl`; anything else unchanged."""
    return value[len("file://"):] if scheme(value) == "file" else value


def check_form(url: str) -> None:
    """Refuse a URL that carries credentials (`s3://key:secret@bucket`: they would
    end up in the recipe copy, the manifest and every error message) or a `.`/`..`
    segment (object stores keep them literally; a prefix check must not be fooled)."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise RemoteError(f"{parts.scheme}://***@...: a URL must not hold credentials; set them "
                          f"in the environment ({OPTIONS_ENV}, AWS_* variables, ...)")
    if any(seg in (".", "..") for seg in parts.path.split("/")):
        raise RemoteError(f"{url!r}: '.' and '..' are not allowed in a URL")


def normalise(url: str) -> str:
    """`S3://bucket/prefix/` -> `s3://bucket/prefix` (the form prefixes are compared in)."""
    check_form(url)
    s = scheme(url)
    rest = url[len(s) + 3:].rstrip("/")
    return f"{s}://{rest}"


def has_magic(url: str) -> bool:
    return any(c in url for c in "*?[")


def fixed_prefix(url: str) -> str:
    """The part of a URL glob before the segment holding its first wildcard."""
    parts = normalise(url).split("/")  # ["s3:", "", "bucket", ...]
    keep = []
    for p in parts:
        if has_magic(p):
            break
        keep.append(p)
    return "/".join(keep) if len(keep) > 2 else f"{scheme(url)}://"  # a wildcard bucket


def inside(url: str, root: str) -> bool:
    """Whether `url` lies at or below the URL prefix `root` (whole segments only:
    `s3://b/data` does not hold `s3://b/database`)."""
    u, r = normalise(url), normalise(root)
    return u == r or u.startswith(r + "/")


def storage_options(protocol: str) -> dict[str, Any]:
    """fsspec options for `protocol` from SMOLFORGE_STORAGE_OPTIONS, if set. The
    value may hold secrets: an error names the variable, never its content."""
    raw = os.environ.get(OPTIONS_ENV)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise RemoteError(f"{OPTIONS_ENV} must be a JSON object: protocol -> storage options "
                          '(for example {"s3": {"endpoint_url": "http://127.0.0.1:9000"}})')
    return dict(data.get(protocol, {}))


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for `url`, with the environment's options."""
    import fsspec

    check_form(url)
    protocol = scheme(url) or "file"
    try:
        return fsspec.core.url_to_fs(url, **storage_options(protocol))
    except ImportError:
        need = _PACKAGES.get(protocol, f"the fsspec filesystem for {protocol}://")
        raise RemoteError(f"{url}: reading {protocol}:// needs {need}") from None
    except ValueError as e:
        if "Protocol not known" in str(e):
            raise RemoteError(f"{url}: unknown protocol {protocol!r}") from None
        raise


# An object's version without reading it: S3 and MinIO's ETag, GCS's generation
# or md5, a local or SFTP file's modification time (fsspec's info() keys).
_VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified",
                 "last_modified", "updated", "created")


def _version(info: dict[str, Any]) -> str:
    return next((str(info[k]) for k in _VERSION_KEYS if info.get(k) is not None), "")


@dataclass(frozen=True)
class RemoteFile:
    """One object by URL, with what its listing said (size, version tag). Stands in
    for a `Path` where smolforge reads input: `name`, `suffix(es)`, `open`,
    `read_bytes`; `str()` is the URL, so every `file:line` message names it."""

    url: str
    size: int | None = None
    version: str = ""

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return PurePosixPath(urlsplit(self.url).path).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def suffixes(self) -> list[str]:
        return PurePosixPath(self.name).suffixes

    def is_file(self) -> bool:
        return True

    def open(self, mode: str = "rb", buffering: int = -1, encoding: str | None = None,
             errors: str | None = None, newline: str | None = None) -> IO:
        """Like Path.open, over fsspec (text modes wrap the bytes)."""
        fs, path = filesystem(self.url)
        if "b" in mode:
            return fs.open(path, mode)
        import io

        return io.TextIOWrapper(fs.open(path, mode.replace("t", "") + "b"), encoding=encoding,
                                errors=errors, newline=newline)

    def read_bytes(self) -> bytes:
        with self.open("rb") as f:
            return f.read()


def listing(pattern: str) -> list[RemoteFile]:
    """The objects a URL or URL glob (`*`, `?`, `[..]`, `**`) names, sorted by URL,
    each with its size and version tag from one listing (no object is read). The
    listing cache is dropped first: a resume must see an object changed since."""
    fs, path = filesystem(pattern)
    s = scheme(pattern)
    fs.invalidate_cache()
    if has_magic(path):
        found = fs.glob(path, detail=True)
    else:
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return []
        found = {path: info}
    out = []
    for name, info in found.items():
        if info.get("type", "file") != "file":
            continue
        url = f"{s}://{name}"
        out.append(RemoteFile(url, info.get("size"), _version(info)))
    return sorted(out, key=lambda f: f.url)


def object_state(url: str) -> str:
    """"object", "folder" (objects lie under `url/`) or "absent", seen afresh."""
    fs, path = filesystem(url)
    fs.invalidate_cache()
    if fs.isfile(path):
        return "object"
    return "folder" if fs.isdir(path) else "absent"


@contextlib.contextmanager
def atomic_object(url: str) -> Iterator[IO[bytes]]:
    """A new object for `url`, as whole as the store allows: written under a
    temporary key beside it (`.<name>.smolforge-<pid>.tmp`), then moved over `url`
    (S3: a server-side copy, so readers see the old object or the new one, never
    part of one) and the temporary key removed. A failure removes the temporary
    key; a kill -9 can leave it behind (a name no export reads), never a partial
    `url`."""
    fs, path = filesystem(url)
    parent, _, name = path.rpartition("/")
    tmp = f"{parent}/.{name}.smolforge-{os.getpid()}.tmp" if parent else f".{name}.smolforge-{os.getpid()}.tmp"
    try:
        with fs.open(tmp, "wb") as f:
            yield f
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise
    finally:
        fs.invalidate_cache()
