"""What the queued prompt says about the lip-sync node: which of its outputs are wired, and its cache key.

ComfyUI keys a node's cached result on every value of its prompt entry, and ``fingerprint_inputs`` sees neither the
prompt nor a way to drop a value: so one on-prompt handler, touching only this node's own entries, makes the key
hold what decides the result and nothing else.
"""

from __future__ import annotations

from server import PromptServer

WIRING_KEY = "latentsync_outputs_wired"  # not an input: part of the node's cache key only


def wired_outputs(prompt: dict) -> dict[str, set[int]]:
    """Node id -> the indices of its outputs that feed another node of the prompt (links are [node id, index])."""
    wired: dict[str, set[int]] = {}
    for node in prompt.values():
        for value in ((node or {}).get("inputs") or {}).values():
            if _is_link(value):
                wired.setdefault(str(value[0]), set()).add(value[1])
    return wired


def output_is_wired(prompt: dict | None, node_id: str | None, index: int) -> bool:
    """Whether output ``index`` of node ``node_id`` feeds another node of the prompt being run."""
    if not prompt or node_id is None:
        return False
    return index in wired_outputs(prompt).get(str(node_id), ())


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def register_prompt_handler(node_class) -> None:
    """Have every queued prompt pass ``cache_key_inputs`` for ``node_class`` first (once per process)."""
    server = PromptServer.instance
    if any(getattr(handler, "latentsync", False) for handler in server.on_prompt_handlers):
        return

    def handler(json_data):
        if isinstance(json_data, dict) and isinstance(json_data.get("prompt"), dict):
            cache_key_inputs(json_data["prompt"], node_class)
        return json_data

    handler.latentsync = True
    server.add_on_prompt_handler(handler)


def cache_key_inputs(prompt: dict, node_class) -> dict:
    """Make ComfyUI's cache key of ``node_class``'s entries say what decides their result, in place.

    - The frontend adds values that are not inputs (``video-preview`` of a node that showed a video): dropped.
    - ``fps`` is read only with ``images``: dropped while a VIDEO is connected.
    - Which outputs are wired decides what is computed (frames only when asked for), so a result made while
      ``frames`` was unwired must not serve a graph where it is: the wired outputs join the key."""
    schema = node_class.GET_SCHEMA()
    ours = {node_id: node for node_id, node in prompt.items()
            if (node or {}).get("class_type") == schema.node_id and isinstance(node.get("inputs"), dict)}
    if not ours:
        return prompt
    declared = {item.id for item in schema.inputs}
    wired = wired_outputs(prompt)
    for node_id, node in ours.items():
        inputs = {name: value for name, value in node["inputs"].items() if name in declared}
        if _is_link(inputs.get("video")):
            inputs.pop("fps", None)
        inputs[WIRING_KEY] = ",".join(map(str, sorted(wired.get(str(node_id), ()))))  # never a link
        node["inputs"] = inputs
    return prompt
