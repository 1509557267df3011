"""An adapter as a zip: written for a download; an upload unpacked with every escape and bomb refused."""

from __future__ import annotations

import stat
import zipfile
import zlib
from pathlib import Path

from tuning import adapters
from tuning.adapters import AdapterError


MAX_UPLOAD_BYTES = 50 * 2**20  # uncompressed; a GPT-2 prompt of 100 tokens is 300 KB
MAX_UPLOAD_FILES = 16
MAX_ZIP_ENTRIES = 64  # files and folders together: a zip of a million empty folders is a bomb too
MAX_ZIP_DEPTH = 3  # path parts of a member: "a/b/adapter_config.json"


def zip_adapter(folder: Path, dest: Path) -> Path:
    """`dest/<name>.zip` with the adapter's regular files (no symlinks, nothing from outside), under `<name>/`."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{folder.name}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for file in sorted(folder.iterdir()):
            if file.is_file() and not file.is_symlink():
                z.write(file, f"{folder.name}/{file.name}")
    return path


def _check_zip_entries(entries: list[zipfile.ZipInfo]) -> None:
    members = [m for m in entries if not m.is_dir()]
    if len(members) > MAX_UPLOAD_FILES:
        raise AdapterError(f"the zip holds {len(members)} files; an adapter has at most {MAX_UPLOAD_FILES}")
    if len(entries) > MAX_ZIP_ENTRIES:
        raise AdapterError(f"the zip holds {len(entries)} entries; an adapter has at most {MAX_ZIP_ENTRIES}")
    if sum(m.file_size for m in members) > MAX_UPLOAD_BYTES:
        raise AdapterError(f"the zip unpacks to more than {MAX_UPLOAD_BYTES // 2**20} MB")
    for m in entries:
        parts = m.filename.replace("\\", "/").rstrip("/").split("/")
        if m.filename.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts:
            raise AdapterError(f"the zip has an unsafe path: {m.filename}")
        if stat.S_ISLNK(m.external_attr >> 16):
            raise AdapterError(f"the zip has a symbolic link: {m.filename}")
        if len(parts) > MAX_ZIP_DEPTH:
            raise AdapterError(f"the zip nests folders too deeply: {m.filename}")


def unzip_safely(zip_path: str, dest: Path) -> Path:
    """Extract an uploaded zip into `dest`, refusing anything that could escape or explode; returns the adapter folder.

    Refused: absolute paths, `..`, symlinks, more than 16 files (64 entries with folders), paths
    more than 3 deep, over 50 MB uncompressed (declared, and counted again while extracting, so a
    zip that lies about its sizes stops at the cap). The adapter files may sit at the top of the
    zip or in a folder.
    """
    try:
        z = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise AdapterError("the upload is not a zip file") from None
    with z:
        _check_zip_entries(z.infolist())
        written = 0
        for m in (m for m in z.infolist() if not m.is_dir()):
            target = dest.joinpath(*m.filename.replace("\\", "/").split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with z.open(m) as src, open(target, "wb") as out:  # zipfile also checks the size and CRC as it reads
                    while chunk := src.read(2**20):
                        written += len(chunk)
                        if written > MAX_UPLOAD_BYTES:
                            raise AdapterError(f"the zip unpacks to more than {MAX_UPLOAD_BYTES // 2**20} MB")
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as e:
                raise AdapterError(f"the zip is damaged or uses an unsupported format ({m.filename}: {e})") from None
    configs = list(dest.rglob(adapters.CONFIG_FILE))
    if len(configs) != 1:
        raise AdapterError(f"the zip must hold exactly one {adapters.CONFIG_FILE}, found {len(configs)}")
    return configs[0].parent
