"""Checks on the files a run writes, made before any work: an output never replaces an input, and its container
and folder can take it."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

# what each codec's output may be called: containers ffmpeg writes that stream into (anything else fails only after
# the whole run, in ffmpeg's words)
OUTPUT_SUFFIXES = {"h264": (".mp4", ".mov", ".m4v", ".mkv"), "ffv1": (".mkv",)}


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when both paths name one file: after links are resolved, or as the same inode (hard links, another
    spelling of a case-insensitive folder)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def check_not_an_input(output: str | Path, inputs: dict[str, str | Path], what: str = "the output") -> None:
    """Refuse, in one sentence, an output that is one of the inputs (writing it would destroy the input)."""
    for name, path in inputs.items():
        if path is not None and isinstance(path, (str, os.PathLike)) and same_file(output, path):
            raise ValueError(f"{what} {output} is the {name} file: writing it would replace the {name}; choose "
                             "another output name")


def check_output_name(output: str | Path, codec: str, what: str = "the output") -> None:
    """Refuse an output name the codec's containers cannot take, in one sentence."""
    if any(mark in str(output) for mark in "\n\r"):
        raise ValueError(f"{what} {str(output)!r} holds a line break: give a file name on one line")
    suffixes = OUTPUT_SUFFIXES[codec]
    if Path(output).suffix.lower() not in suffixes:
        container = "Matroska" if codec == "ffv1" else "MP4, MOV or Matroska"
        raise ValueError(f"{what} {output}: codec {codec} writes {container}; give a name ending in "
                         f"{' or '.join(suffixes)}")


def writable_folder(output: str | Path) -> Path:
    """The folder ``output`` goes in, or its nearest existing parent (created when the run starts), when it is
    writable; PermissionError naming it otherwise."""
    folder = Path(output).resolve().parent
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is a file, not a folder: the output {output} cannot go inside it; "
                                 "choose another output path")
    check_name_length(output, existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"the folder {existing} is not writable: choose another output path or make it "
                              "writable")
    return existing


def check_name_length(output: str | Path, folder: Path | None = None) -> None:
    """Refuse an output name longer than its disk takes (``folder``: the existing folder it goes in), in one
    sentence, before the OS refuses it after the run."""
    name = Path(output).name
    try:
        name_max = os.pathconf(folder or Path(output).parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no such folder yet, or Windows (no pathconf): NTFS takes 255
        name_max = 255
    if len(name.encode()) > name_max:
        raise ValueError(f"the output name {name[:40]}... is {len(name.encode())} bytes long and this disk takes at "
                         f"most {name_max}: give a shorter name")


def disk_full_sentence(error: BaseException, folders: list[Path], temp_folder: str | Path) -> str | None:
    """For an error caused by a full disk (the OS's, or ffmpeg's words for it): one sentence naming the folder
    with the least free space among the output folders and the temp folder, and the fix; None for other errors."""
    if getattr(error, "errno", None) != errno.ENOSPC and "No space left on device" not in str(error):
        return None
    free = {}
    for folder in [*folders, Path(temp_folder)]:
        try:
            free[folder] = shutil.disk_usage(folder).free
        except OSError:
            continue
    if not free:
        return "no space left on the disk: free some space and run again"
    folder = min(free, key=free.get)
    fix = ("or write the output to another disk" if folder != Path(temp_folder) else
           "or point TMPDIR (where the disk cache goes) at a disk with more room")
    return (f"no space left on the disk of {folder} ({free[folder] / 1024 ** 3:.1f} GB free): free some space there, "
            f"{fix}, and run again")


def user_cache() -> Path:
    """The user's cache folder for the project (``LATENTSYNC_CACHE`` names another): VRAM counts, compiled code."""
    folder = os.environ.get("LATENTSYNC_CACHE")
    return Path(folder) if folder else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "latentsync"
