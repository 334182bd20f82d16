"""One reader for the zip archives torch writes (``torch.save``, TorchScript, ``.pt2``).

torch reads these archives with its own zip reader (``torch._C.PyTorchFileReader``, miniz), which
finds a member by binary search over names compared case-insensitively; Python's ``zipfile``
keeps the last of two equal names. An archive holding two entries of one name (or of names that
differ only in case) therefore shows a check written with ``zipfile`` one member and torch
another: the check passes a benign copy and torch unpickles the other. :func:`open_archive`
refuses such archives, refuses entries whose local header disagrees with the central directory,
checks that both readers find every entry at the same bytes, and then reads members through
torch's own reader, so that every check sees the bytes torch will load.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from aegis.errors import AegisError, UnsafeFileError
from aegis.io.loaded import _corrupt

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile.structFileHeader: 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"
_REFUSED = "an archive torch and Python read differently; refused (re-save the model)"


class TorchArchive:
    """The members of a zip archive, named and read as torch names and reads them.

    ``names`` are the record names torch lists (without the archive's top folder); where torch's
    reader cannot open the archive at all (torch then fails, or falls back to ``zipfile`` for the
    legacy ``.pt2`` layout), they are the ``zipfile`` names, read with ``zipfile``.
    """

    def __init__(self, names: list[str], read: Callable[[str], bytes], reader: str) -> None:
        self.names = names
        self._read = read
        self.reader = reader  # "torch" or "python"

    def read(self, name: str) -> bytes:
        return self._read(name)

    def inner(self, name: str) -> str:
        """``name`` without the archive's top folder (torch's records already are)."""
        return _strip_top(name) if self.reader == "python" else name


def open_archive(file: Path, what: str) -> TorchArchive:
    """Check that torch and Python see the same members of ``file``, then open it for reading.

    Raises:
        UnsafeFileError: two entries share a name (or differ only in case), a local header names
            another entry, or the two readers locate an entry at different bytes.
        ModelError: the file is not a readable zip archive.
    """
    try:
        with zipfile.ZipFile(file) as zf:
            infos = zf.infolist()
            offsets = _data_offsets(file, infos)
    except AegisError:
        raise
    except Exception as exc:  # BadZipFile, OSError, struct.error, NotImplementedError, ...
        raise _corrupt(file, what, exc) from exc
    _refuse_duplicates(file, [info.filename for info in infos])
    try:
        reader = torch._C.PyTorchFileReader(str(file))
        names = list(reader.get_all_records())
    except Exception:
        return _python_archive(file, what)
    _check_same_entries(file, infos, offsets, reader, names)

    def read(name: str) -> bytes:
        try:
            return bytes(reader.get_record(name))
        except Exception as exc:
            raise _corrupt(file, what, exc) from exc

    return TorchArchive(names, read, "torch")


def _python_archive(file: Path, what: str) -> TorchArchive:
    with zipfile.ZipFile(file) as zf:
        names = zf.namelist()

    def read(name: str) -> bytes:
        try:
            with zipfile.ZipFile(file) as zf:
                return zf.read(name)
        except Exception as exc:  # BadZipFile, zlib.error, an encrypted entry, ...
            raise _corrupt(file, what, exc) from exc

    return TorchArchive(names, read, "python")


def _refuse_duplicates(file: Path, names: list[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        folded = name.casefold()
        if folded not in seen:
            seen[folded] = name
            continue
        first = seen[folded]
        if first == name:
            raise UnsafeFileError(f"{file.name} holds two entries named {_shown(name)}: {_REFUSED}")
        raise UnsafeFileError(
            f"{file.name} holds two entries named {_shown(first)} and {_shown(name)}, which "
            f"torch reads as one (it compares names case-insensitively): {_REFUSED}"
        )


def _data_offsets(file: Path, infos: list[zipfile.ZipInfo]) -> dict[str, int]:
    """Where each entry's data starts, read from its local header (as both readers do); the
    local header must name the same entry as the central directory."""
    offsets: dict[str, int] = {}
    with file.open("rb") as fh:
        for info in infos:
            fh.seek(info.header_offset)
            header = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
            raw = fh.read(header[10])
            local = raw.decode("utf-8" if header[3] & 0x800 else "cp437", errors="replace")
            if header[0] != _LOCAL_MAGIC or local != info.orig_filename:
                raise UnsafeFileError(
                    f"{file.name} lists an entry {_shown(info.orig_filename)} whose local header "
                    f"names {_shown(local)}: {_REFUSED}"
                )
            offsets[info.filename] = info.header_offset + _LOCAL_HEADER.size + header[10]
            offsets[info.filename] += header[11]
    return offsets


def _check_same_entries(
    file: Path,
    infos: list[zipfile.ZipInfo],
    offsets: dict[str, int],
    reader: torch._C.PyTorchFileReader,
    names: list[str],
) -> None:
    """torch's records are the zip entries less their top folder, at the same bytes."""
    by_name = {_strip_top(info.filename): info for info in infos}
    if len(by_name) != len(infos) or set(by_name) != set(names):
        odd = sorted(set(by_name) ^ set(names)) or [infos[0].filename]
        raise UnsafeFileError(
            f"{file.name}: torch and Python list different entries ({_shown(odd[0])}): {_REFUSED}"
        )
    offset_of = getattr(reader, "get_record_offset", None)  # torch >= 2.1
    for name in names:
        info = by_name[name]
        try:
            same = reader.get_record_size(name) == info.file_size and (
                offset_of is None or offset_of(name) == offsets[info.filename]
            )
        except Exception:
            same = False
        if not same:
            raise UnsafeFileError(
                f"{file.name}: torch and Python find entry {_shown(name)} at different bytes: "
                f"{_REFUSED}"
            )


def _strip_top(name: str) -> str:
    return name.split("/", 1)[1] if "/" in name else name


def _shown(text: str, limit: int = 120) -> str:
    """A name from the file, safe to put in a one-line message."""
    shown = text if text.isprintable() and text.strip() == text and text else repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."
