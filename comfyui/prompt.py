"""What the queued graph says about our nodes: which of their outputs are wired, and ComfyUI's cache key of them.

ComfyUI tells a node nothing of its outputs' links, so both are read from the prompt: once by an on-prompt handler
(the cache key) and by the lip-sync node (whether its frames are asked for).
"""

from __future__ import annotations

import sys


def output_is_wired(prompt: dict | None, node_id: str | None, index: int) -> bool:
    """Whether output ``index`` of node ``node_id`` feeds another node of the prompt being run."""
    if not prompt or node_id is None:
        return False
    return index in wired_outputs(prompt).get(str(node_id), ())


def wired_outputs(prompt: dict) -> dict[str, set[int]]:
    """Node id -> the indices of its outputs that feed another node of the prompt (links are [node id, index])."""
    wired: dict[str, set[int]] = {}
    for node in prompt.values():
        for value in ((node or {}).get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                wired.setdefault(str(value[0]), set()).add(value[1])
    return wired


WIRING_KEY = "latentsync_outputs_wired"  # not an input: part of the node's cache key only


def register_prompt_handler(node_classes: dict) -> None:
    """Have every prompt that reaches the server pass ``cache_key_inputs`` first (once per process)."""
    server = sys.modules.get("server")  # ComfyUI imports it before any custom node; never imported here
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None or not hasattr(instance, "add_on_prompt_handler"):
        return
    if any(getattr(handler, "latentsync", False) for handler in getattr(instance, "on_prompt_handlers", [])):
        return

    def handler(json_data):
        if isinstance(json_data, dict) and isinstance(json_data.get("prompt"), dict):
            cache_key_inputs(json_data["prompt"], node_classes)
        return json_data

    handler.latentsync = True
    instance.add_on_prompt_handler(handler)


def cache_key_inputs(prompt: dict, node_classes: dict) -> dict:
    """Make ComfyUI's cache key of our nodes say what decides their result, in place.

    ComfyUI keys a node's cached result on every value of its ``inputs``. The frontend adds values there that are
    not inputs (the ``video-preview`` of a node that showed a video), so an unchanged graph would run again: they are
    dropped. And which outputs are wired decides what the lip-sync node computes (frames only when asked for), so a
    result made while ``frames`` was unwired must not serve a graph where it is: the wired outputs join the key."""
    wired = wired_outputs(prompt)
    for node_id, node in prompt.items():
        node_class = node_classes.get((node or {}).get("class_type"))
        if node_class is None or not isinstance(node.get("inputs"), dict):
            continue
        declared = declared_inputs(node_class)
        node["inputs"] = {name: value for name, value in node["inputs"].items() if name in declared}
        if len(node_class.RETURN_TYPES) > 1:
            node["inputs"][WIRING_KEY] = ",".join(map(str, sorted(wired.get(str(node_id), ()))))  # never a link
    return prompt


def declared_inputs(node_class) -> dict[str, object]:
    """Input name -> its declared type (``INPUT_TYPES``: required, optional and hidden alike)."""
    return {name: spec[0] if isinstance(spec, tuple) else spec
            for group in node_class.INPUT_TYPES().values() for name, spec in group.items()}
