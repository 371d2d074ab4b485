"""Locate, download and describe the model weights.

Layout of a checkpoints folder (the published LatentSync layout plus the VAE and face models):

    latentsync_unet.pt              LatentSync 1.6 UNet (ByteDance/LatentSync-1.6)
    1.5/latentsync_unet.pt          LatentSync 1.5 UNet (ByteDance/LatentSync-1.5), optional
    whisper/tiny.pt                 openai-whisper tiny (shipped in both LatentSync repos)
    vae/config.json, vae/diffusion_pytorch_model.safetensors      stabilityai/sd-vae-ft-mse
    auxiliary/models/buffalo_l/*.onnx                             InsightFace buffalo_l (1.6 face geometry)

Folders searched, first match wins: the folders a front names (the CLI's --checkpoints; in ComfyUI the
``latentsync`` model folders, extra_model_paths.yaml included), $LATENTSYNC_CHECKPOINTS, and the default folder
(a checkout's ``checkpoints/``, or ~/.cache/latentsync/checkpoints for an installed package). Nothing is
downloaded unless asked for (``python -m latentsync.checkpoints download``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union
from .errors import DownloadError, MissingCheckpointError  # noqa: F401 (raised here; defined with the others)

log = logging.getLogger("latentsync.checkpoints")

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SCHEDULER_CONFIG = CONFIG_DIR / "scheduler_config.json"
# A checkout (the ComfyUI pack, the README's quick start) keeps its weights in its own checkpoints/; an installed
# package in the user's cache.
DEFAULT_CHECKPOINTS = (PACKAGE_ROOT / "checkpoints" if (PACKAGE_ROOT / "comfyui").is_dir()
                       else Path.home() / ".cache" / "latentsync" / "checkpoints")
VAE_REPO = "stabilityai/sd-vae-ft-mse"
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    repo: str
    unet_file: str  # path inside the checkpoints folder
    unet_config: Path
    resolution: int


VERSIONS = {
    "1.6": ModelVersion("1.6", "ByteDance/LatentSync-1.6", "latentsync_unet.pt", CONFIG_DIR / "unet" / "stage2_512.yaml",
                        512),
    "1.5": ModelVersion("1.5", "ByteDance/LatentSync-1.5", "1.5/latentsync_unet.pt", CONFIG_DIR / "unet" / "stage2.yaml",
                        256),
}
WHISPER_FILE = "whisper/tiny.pt"
BUFFALO_DIR = "auxiliary/models/buffalo_l"
BUFFALO_FILES = ("det_10g.onnx", "2d106det.onnx")
BUFFALO_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
# Real files are far larger; anything below these is a broken download (tiny test sets are exempt: see verify).
OFFICIAL_MIN_BYTES = {"latentsync_unet.pt": 4_000_000_000, "tiny.pt": 70_000_000,
                      "diffusion_pytorch_model.safetensors": 300_000_000}



@dataclass(frozen=True)
class CheckpointSet:
    root: Path
    version: ModelVersion
    unet: Path
    unet_config: Path
    whisper: Path
    vae_dir: Path


def get_version(version: str) -> ModelVersion:
    try:
        return VERSIONS[str(version)]
    except KeyError:
        raise ValueError(f"unknown LatentSync version {version!r}: choose one of {sorted(VERSIONS)}") from None


Folders = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], None]  # one folder or several


def search_dirs(explicit: Folders = None) -> list[Path]:
    """The folders searched, in order: ``explicit`` (one folder or several), $LATENTSYNC_CHECKPOINTS, the package's
    ``checkpoints/``."""
    named = [explicit] if isinstance(explicit, (str, os.PathLike)) else list(explicit or [])
    candidates = [*named, os.environ.get("LATENTSYNC_CHECKPOINTS"), DEFAULT_CHECKPOINTS]
    dirs: list[Path] = []
    for candidate in candidates:
        if candidate and Path(candidate) not in dirs:
            dirs.append(Path(candidate))
    return dirs


def download_command(version: str | None, root: Path) -> str:
    """The download command as it runs from any folder (ComfyUI's users paste it in ComfyUI's folder, where
    ``latentsync`` is not importable): it changes to this package's folder and names the Python running now."""
    change = "cd /d" if os.name == "nt" else "cd"
    version = f" --version {version}" if version else ""
    return (f'{change} "{PACKAGE_ROOT}" && "{sys.executable}" -m latentsync.checkpoints download{version} '
            f'--dir "{Path(root).resolve()}"')


def _find(relative: str, dirs: list[Path]) -> Path | None:
    for folder in dirs:
        if (folder / relative).is_file():
            return folder / relative
    return None


def _vae_dir(dirs: list[Path]) -> Path | None:
    for folder in dirs:
        if all((folder / "vae" / name).is_file() for name in VAE_FILES):
            return folder / "vae"
    return None


def locate(version: str = "1.6", checkpoints_dir: Folders = None,
           unet_config: str | os.PathLike | None = None) -> CheckpointSet:
    """Find every file a run needs (never downloads: a missing file is one sentence with the download command)."""
    spec = get_version(version)
    dirs = search_dirs(checkpoints_dir)
    target = dirs[0]  # where the download command would put them: the first (most specific) folder
    needed = {"unet": spec.unet_file, "whisper": WHISPER_FILE}
    found = {key: _find(rel, dirs) for key, rel in needed.items()}
    vae_dir = _vae_dir(dirs)
    missing = [rel for key, rel in needed.items() if found[key] is None]
    if vae_dir is None:
        missing.append("vae/" + " + vae/".join(VAE_FILES))
    if missing:
        where = ", ".join(str(d) for d in dirs)
        raise MissingCheckpointError(
            f"LatentSync {spec.name} checkpoint missing: {target / missing[0]} (searched {where}); "
            f"download it with: {download_command(spec.name, target)}")
    return CheckpointSet(root=found["unet"].parents[len(Path(spec.unet_file).parts) - 1], version=spec,
                         unet=found["unet"], unet_config=Path(unet_config or spec.unet_config),
                         whisper=found["whisper"], vae_dir=vae_dir)



def _reachable(host: str, timeout: float = 5.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def require_online(*hosts: str) -> None:
    """One quick check before a download, instead of minutes of retries: DownloadError when offline."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DownloadError("offline (HF_HUB_OFFLINE=1 is set): unset it and run the download again, or copy the "
                            "files into the checkpoints folder by hand")
    unreachable = [host for host in hosts if not _reachable(host)]
    if unreachable:
        raise DownloadError(f"offline: {', '.join(unreachable)} cannot be reached; connect to the internet and run "
                            "the download again, or copy the files into the checkpoints folder by hand")


def download_missing(version: str, root: Path, unet: bool = True, whisper: bool = True, vae: bool = True,
                     buffalo: bool = False) -> None:
    """Download the official files into ``root`` (resumable, with progress bars); only ever asked for explicitly.

    Raises DownloadError with one sentence when offline or a file fails; a folder the download created is removed
    again when nothing could be downloaded into it."""
    spec = get_version(version)
    jobs = []
    if unet:
        jobs.append((spec.repo, "latentsync_unet.pt", root / Path(spec.unet_file).parent))
    if whisper:
        jobs.append((spec.repo, WHISPER_FILE, root))
    if vae:
        jobs += [(VAE_REPO, name, root / "vae") for name in VAE_FILES]
    if not jobs and not buffalo:
        return
    require_online(*(["huggingface.co"] if jobs else []), *(["github.com"] if buffalo else []))
    created = not root.exists()
    try:
        for repo, filename, local_dir in jobs:
            _hf_download(repo, filename, local_dir)
        if buffalo:
            download_buffalo(root)
    except BaseException:
        if created and not any(p.is_file() and p.stat().st_size > 0 for p in root.rglob("*")):
            shutil.rmtree(root, ignore_errors=True)  # only lock files and empty folders it made; partial data stays
        raise


def _hf_download(repo: str, filename: str, local_dir: Path) -> None:
    from huggingface_hub import hf_hub_download

    try:
        log.info("downloading %s/%s to %s", repo, filename, local_dir)
        hf_hub_download(repo_id=repo, filename=filename, local_dir=str(local_dir))
    except Exception as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise DownloadError(f"downloading {repo}/{filename} failed ({detail}); run the download again to resume")


# InsightFace's v0.7 release archive and the two models the 1.6 geometry needs (sha256).
BUFFALO_ZIP_SHA256 = "80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f"
BUFFALO_SHA256 = {"det_10g.onnx": "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
                  "2d106det.onnx": "f001b856447c413801ef5c42091ed0cd516fcd21f2d6b79635b1e733a7109dbf"}


def sha256_of(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_buffalo(root: Path) -> None:
    """InsightFace's buffalo_l (det_10g + 2d106det) into BUFFALO_DIR: the release archive, resumable, checked
    against its sha256 before it is opened, each model checked again before it takes its final name."""
    import urllib.request
    import zipfile

    target = root / BUFFALO_DIR
    if all((target / name).is_file() for name in BUFFALO_FILES):
        return
    target.mkdir(parents=True, exist_ok=True)
    partial = target.parent / "buffalo_l.zip.partial"
    try:
        done = partial.stat().st_size if partial.exists() else 0
        request = urllib.request.Request(BUFFALO_URL, headers={"Range": f"bytes={done}-"} if done else {})
        with urllib.request.urlopen(request, timeout=60) as response, open(partial, "ab" if done else "wb") as out:
            if done and response.status != 206:  # the server ignored the range: start over
                out.truncate(0)
            shutil.copyfileobj(response, out, length=1 << 20)
    except OSError as error:  # the partial file stays: the next run resumes it
        raise DownloadError(f"downloading {BUFFALO_URL} failed ({error}); run the download again to resume")
    if sha256_of(partial) != BUFFALO_ZIP_SHA256:
        partial.unlink()
        raise DownloadError(f"the buffalo_l archive from {BUFFALO_URL} does not have the published checksum (a "
                            "broken or altered download) and was deleted; run the download again")
    with zipfile.ZipFile(partial) as archive:
        for name, expected in BUFFALO_SHA256.items():
            member = next(m for m in archive.namelist() if m.endswith(name))
            temp = target / f".{name}.partial"
            with archive.open(member) as src, open(temp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if sha256_of(temp) != expected:
                temp.unlink()
                raise DownloadError(f"{name} in the buffalo_l archive does not have the published checksum")
            os.replace(temp, target / name)
    partial.unlink()


def describe_file(path: Path) -> dict:
    """Presence and plausibility of one weight file, for verify_installation."""
    if not path.is_file():
        return {"path": str(path), "present": False, "size": 0, "plausible": False}
    size = path.stat().st_size
    minimum = OFFICIAL_MIN_BYTES.get(path.name, 1)
    return {"path": str(path), "present": True, "size": size, "plausible": size >= minimum}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m latentsync.checkpoints",
                                     description="Download the LatentSync weights.")
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("download", help="download the official checkpoints (resumable)")
    get.add_argument("--version", default="1.6", choices=sorted(VERSIONS))
    get.add_argument("--dir", default=str(DEFAULT_CHECKPOINTS))
    get.add_argument("--no-face-models", action="store_true", help="skip InsightFace buffalo_l")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root, spec = Path(args.dir), get_version(args.version)
    face_models = not args.no_face_models and not all((root / BUFFALO_DIR / n).is_file() for n in BUFFALO_FILES)
    try:
        download_missing(args.version, root, unet=_find(spec.unet_file, [root]) is None,
                         whisper=_find(WHISPER_FILE, [root]) is None, vae=_vae_dir([root]) is None,
                         buffalo=face_models)
        found = locate(args.version, root)
    except (DownloadError, MissingCheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"LatentSync {args.version} checkpoints ready in {found.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
