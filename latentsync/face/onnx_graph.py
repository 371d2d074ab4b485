"""The first node names of an ONNX graph, read from the protobuf wire format (the ``onnx`` package is not needed:
insightface's landmark model is told apart by them)."""

from __future__ import annotations

from pathlib import Path


def first_node_names(path: Path, count: int = 8) -> list[str]:
    """Names of the first graph nodes of an ONNX file (ModelProto.graph=7 -> GraphProto.node=1 -> name=3),
    read straight from the protobuf wire format so the ``onnx`` package is not needed."""

    def fields(buf: memoryview):
        pos = 0
        while pos < len(buf):
            key, pos = _varint(buf, pos)
            num, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(buf, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                size, pos = _varint(buf, pos)
                yield num, buf[pos:pos + size]
                pos += size
            else:
                raise ValueError(f"unsupported protobuf wire type {wire} in {path}")

    data = memoryview(path.read_bytes())
    names: list[str] = []
    for num, graph in fields(data):
        if num != 7:
            continue
        for gnum, node in fields(graph):
            if gnum != 1:
                continue
            names.append(next((bytes(v).decode() for n, v in fields(node) if n == 3), ""))
            if len(names) >= count:
                return names
    return names


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
