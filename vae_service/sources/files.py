"""Which files a `data.source` names: a file, a folder (searched recursively), a glob, or an s3://
prefix, read with the storage settings of checkpoints (vae_service.storage)."""

from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs

from vae_service import storage
from vae_service.core.data import DataError
from vae_service.core.spec import DataSpec

EXTENSIONS = {
    "images": (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"),
    "numpy": (".npy", ".npz"),
    "parquet": (".parquet", ".pq"),
}
WILDCARDS = "*?["


@dataclass(frozen=True)
class SourceFiles:
    filesystem: pafs.FileSystem
    paths: list[str]  # on `filesystem` (bucket/key on S3), sorted
    total_bytes: int


def list_source(data: DataSpec) -> SourceFiles:
    """The data files of `data.source` (those with the format's extensions); DataError naming
    data.source when it does not exist, cannot be read, or holds none."""
    source, extensions = data.source, EXTENSIONS[data.format]
    base, pattern = _split_glob(source)
    try:
        location = storage.resolve(base)
        info = location.filesystem.get_file_info(location.path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"data.source: {source} does not exist")
        if info.type == pafs.FileType.File:
            found = [info]
        else:
            selector = pafs.FileSelector(location.path, recursive=True)
            found = [i for i in location.filesystem.get_file_info(selector) if i.type == pafs.FileType.File]
    except storage.StorageError as exc:
        raise DataError(f"data.source: {exc}") from None
    except OSError as exc:
        raise DataError(f"data.source: cannot list {source}: {storage.reason(exc)}") from None
    if pattern:
        found = [i for i in found if fnmatch.fnmatch(i.path, posixpath.join(location.path, pattern))]
    found = [i for i in found if i.path.lower().endswith(extensions) and not posixpath.basename(i.path).startswith(".")]
    if not found:
        raise DataError(f"data.source: no {data.format} files ({', '.join(extensions)}) in {source}")
    found.sort(key=lambda i: i.path)
    return SourceFiles(location.filesystem, [i.path for i in found], sum(i.size or 0 for i in found))


def _split_glob(source: str) -> tuple[str, str]:
    """`data/*/x*.png` → (`data`, `*/x*.png`): list from the folder before the first wildcard."""
    parts = source.split("/")
    for index, part in enumerate(parts):
        if any(char in part for char in WILDCARDS):
            return "/".join(parts[:index]) or ".", "/".join(parts[index:])
    return source, ""
