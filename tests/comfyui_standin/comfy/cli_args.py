"""Stand-in for comfy.cli_args (see README.md): the parsed command line, as ComfyUI's defaults give it."""

from types import SimpleNamespace

args = SimpleNamespace(cpu=True, cache_lru=0)
