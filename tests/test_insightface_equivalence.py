"""The project's InsightFace path against the insightface package itself, on real frames.

The buffalo_l weights cannot be downloaded here, so the test builds two small ONNX models with the signatures of
buffalo_l's det_10g.onnx (SCRFD: one dynamic-size image in, scores / boxes / keypoints at strides 8, 16, 32 with two
anchors each) and 2d106det.onnx (a 192 x 192 crop in, 212 numbers out), with fixed random weights. insightface
recognises models by those signatures. Both implementations then run on frames of the demo clips (and on a frame
with two faces side by side): FaceAnalysis(allowed_modules=["detection", "landmark_2d_106"]) with det_size 512, as
the published LatentSync calls it, against latentsync.face.insightface.InsightFaceDetector. Boxes, scores, landmarks
and the chosen face (the published rule, written out here) must agree bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latentsync.face.insightface import BROW1_106, BROW2_106, NOSE_106, InsightFaceDetector
from latentsync.video import iter_frame_batches

onnx = pytest.importorskip("onnx", reason="the test builds ONNX models: pip install -r requirements-dev.txt")
FaceAnalysis = pytest.importorskip("insightface.app", reason="needs the insightface package (requirements-dev)"
                                   ).FaceAnalysis
STRIDES = (8, 16, 32)


def _const(name: str, array: np.ndarray):
    return onnx.numpy_helper.from_array(np.asarray(array, np.float32), name)


def scrfd_like(path: Path, seed: int = 0) -> None:
    """det_10g.onnx's interface: input.1 (1, 3, ?, ?) -> 9 outputs (scores, boxes, keypoints per stride)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes, inits, outputs = [], [], {"score": [], "bbox": [], "kps": []}
    for stride in STRIDES:
        pooled = f"pool{stride}"
        nodes.append(helper.make_node("AveragePool", ["input.1"], [pooled], kernel_shape=[stride, stride],
                                      strides=[stride, stride]))
        for kind, channels in (("score", 2), ("bbox", 8), ("kps", 20)):
            weight, bias = f"w_{kind}{stride}", f"b_{kind}{stride}"
            inits += [_const(weight, rng.normal(0, 1.5, (channels, 3, 1, 1))),
                      _const(bias, rng.normal(-1.0 if kind == "score" else 0.0, 0.5, channels))]
            conv = f"{kind}{stride}_conv"
            nodes.append(helper.make_node("Conv", [pooled, weight, bias], [conv]))
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [conv], [f"{conv}_act"]))
            elif kind == "bbox":  # positive distances, 1 to 7 strides
                inits += [_const(f"six{stride}", [6.0]), _const(f"one{stride}", [1.0])]
                nodes += [helper.make_node("Sigmoid", [conv], [f"{conv}_s"]),
                          helper.make_node("Mul", [f"{conv}_s", f"six{stride}"], [f"{conv}_m"]),
                          helper.make_node("Add", [f"{conv}_m", f"one{stride}"], [f"{conv}_act"])]
            else:
                nodes.append(helper.make_node("Identity", [conv], [f"{conv}_act"]))
            shape = f"shape_{kind}{stride}"
            inits.append(onnx.numpy_helper.from_array(np.array([-1, channels // 2], np.int64), shape))
            nodes += [helper.make_node("Transpose", [f"{conv}_act"], [f"{conv}_t"], perm=[0, 2, 3, 1]),
                      helper.make_node("Reshape", [f"{conv}_t", shape], [f"{kind}_{stride}"])]
            outputs[kind].append(helper.make_tensor_value_info(f"{kind}_{stride}", TensorProto.FLOAT,
                                                               [None, channels // 2]))
    graph = helper.make_graph(nodes, "scrfd_like", [helper.make_tensor_value_info(
        "input.1", TensorProto.FLOAT, [1, 3, "?", "?"])], outputs["score"] + outputs["bbox"] + outputs["kps"],
        inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def landmark_like(path: Path, seed: int = 1) -> None:
    """2d106det.onnx's interface: data (1, 3, 192, 192) -> fc1 (1, 212), normalised coordinates."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [_const("w", rng.normal(0, 0.05, (3 * 12 * 12, 212))), _const("b", rng.normal(0, 0.3, 212))]
    nodes = [helper.make_node("AveragePool", ["data"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["gemm"]),
             helper.make_node("Tanh", ["gemm"], ["fc1"])]
    graph = helper.make_graph(nodes, "landmark_like",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 212])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    folder = root / "auxiliary" / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    scrfd_like(folder / "det_10g.onnx")
    landmark_like(folder / "2d106det.onnx")
    app = FaceAnalysis(name=str(folder), allowed_modules=["detection", "landmark_2d_106"],
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(512, 512))
    ours = InsightFaceDetector(root, device="cpu")
    return app, ours


def published_choice(faces) -> object | None:
    """The published LatentSync's FaceDetector rule, as it reads: the largest int box with w >= 50, h >= 80,
    0.2 <= w/h <= 1.5 and det_score >= 0.5."""
    best, best_size = None, 0
    for face in faces:
        x1, y1, x2, y2 = face.bbox.astype(np.int_).tolist()
        w, h = x2 - x1, y2 - y1
        if w < 50 or h < 80 or w / h > 1.5 or w / h < 0.2 or face.det_score < 0.5:
            continue
        if w * h > best_size:
            best, best_size = face, w * h
    return best


def published_anchors(face) -> np.ndarray:
    lmk = np.round(face.landmark_2d_106).astype(np.int_)
    points = [lmk[BROW1_106].mean(axis=0), lmk[BROW2_106].mean(axis=0), lmk[NOSE_106].mean(axis=0)]
    return np.round(points)


def frames(media_dir: Path) -> list[np.ndarray]:
    picked = []
    for name in ("demo1_video.mp4", "demo2_video.mp4"):
        for index, batch in enumerate(iter_frame_batches(media_dir / name, 16)):
            picked.append(batch[0].copy())
            if index == 4:
                break
    side_by_side = np.concatenate([picked[0], picked[0][:, ::-1]], axis=1)  # two faces
    return picked + [side_by_side]


def test_boxes_scores_landmarks_and_choice_equal_the_insightface_package(models, media_dir):
    app, ours = models
    compared = chosen = 0
    for frame in frames(media_dir):
        faces = app.get(frame)
        boxes, scores = ours.boxes(frame)
        assert len(boxes) == len(faces) > 0
        np.testing.assert_array_equal(boxes, np.stack([f.bbox for f in faces]))  # bit for bit
        np.testing.assert_array_equal(scores, np.array([f.det_score for f in faces]))
        for box, face in zip(boxes, faces):
            np.testing.assert_array_equal(ours.landmarks(frame, box), face.landmark_2d_106)
            compared += 1
        expected = published_choice(faces)
        anchors = ours.detect(frame[None])[0]
        if expected is None:
            assert anchors is None
        else:
            chosen += 1
            np.testing.assert_array_equal(anchors, published_anchors(expected))
    assert compared >= 100 and chosen >= 5  # not a vacuous comparison
