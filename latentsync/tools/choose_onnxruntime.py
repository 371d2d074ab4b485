"""``python -m latentsync.tools.choose_onnxruntime``: the onnxruntime package to install here, or nothing.

onnxruntime and onnxruntime-gpu install the same ``onnxruntime`` module: the CPU package installed beside the GPU one
overwrites it and the CUDA provider is gone. So an installed build (any of them) is kept, and only a Python without
one gets a build: onnxruntime-gpu where torch sees CUDA, onnxruntime elsewhere. Prints the requirement, or nothing.
"""

from __future__ import annotations

from importlib import metadata

MINIMUM = "1.16"
# the distributions that provide the onnxruntime module (one per hardware family)
BUILDS = ("onnxruntime-gpu", "onnxruntime", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-silicon",
          "onnxruntime-rocm", "onnxruntime-qnn")


def installed_builds() -> list[str]:
    found = []
    for name in BUILDS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def requirement(installed: list[str], cuda: bool) -> str | None:
    """What to install given the builds already there and whether torch sees CUDA."""
    if installed:
        return None
    return f"{'onnxruntime-gpu' if cuda else 'onnxruntime'}>={MINIMUM}"


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.version.cuda) and torch.cuda.is_available()


if __name__ == "__main__":
    choice = requirement(installed_builds(), _cuda())
    if choice:
        print(choice)
