"""Pickle detection by content, not by file name: what "nothing is pickled" is checked with.

A file is a pickle when `pickletools` can read it as pickle opcodes from its first byte up to a
STOP, and it either opens with PROTO (protocols 2–5: b"\\x80" + protocol byte) or that STOP is its
last byte (protocols 0 and 1 have no header). Zip files are opened and every member is checked the
same way, and a member named *.pkl counts on its own: `torch.save` writes a zip whose
`archive/data.pkl` is a pickle. A file that starts like a zip but cannot be read whole is
reported too: what it holds cannot be checked.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
import zlib
from pathlib import Path
from typing import Iterable


def is_pickle(data: bytes) -> bool:
    """True when `data` is a pickle stream (see the module docstring)."""
    if not data:
        return False
    stop = None
    try:
        for opcode, _arg, position in pickletools.genops(data):
            if opcode.name == "STOP":
                stop = position
                break
    except Exception:  # not opcodes, or cut short before a STOP
        return False
    if stop is None:
        return False
    has_header = data[0] == 0x80 and len(data) > 1 and 2 <= data[1] <= 5
    return has_header or stop == len(data) - 1


def pickles_in_bytes(name: str, data: bytes) -> list[str]:
    """`name` (and `name!member` for zip members) for every pickle in this file's bytes."""
    found = [name] if is_pickle(data) else []
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for member in archive.namelist():
                    if member.endswith((".pkl", ".pickle")) or is_pickle(archive.read(member)):
                        found.append(f"{name}!{member}")
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
            # It starts like a zip and cannot be read whole: what it holds is unknown, so it
            # counts as found (a truncated torch.save file is one), never as clean.
            found.append(f"{name} (a zip that cannot be read: {exc.__class__.__name__}: {exc})")
    return found


def pickles_under(*roots: Path) -> list[str]:
    """Every pickle in every file under the given directories (empty: none)."""
    found = []
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file():
                found += pickles_in_bytes(str(path), path.read_bytes())
    return found


def file_names(*roots: Path) -> set[str]:
    """The relative paths of the files under the given directories."""
    return {str(p.relative_to(root)) for root in roots for p in Path(root).rglob("*") if p.is_file()}


def assert_no_pickles(roots: Iterable[Path]) -> None:
    roots = list(roots)
    assert any(any(Path(r).rglob("*")) for r in roots), f"nothing to check under {roots}"
    found = pickles_under(*roots)
    assert found == [], f"pickles found: {found}"
