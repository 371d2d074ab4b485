"""Face stage on the real demo clips (dlib backend; buffalo_l weights are not available offline).

Detection runs on every 5th frame of both clips (150 of 750 frames) to keep the suite fast on a 2-core CPU;
LATENTSYNC_FACE_TEST_STRIDE=1 checks every frame. The align / restore checks use 8 of those frames per clip.
"""

import os

import av
import cv2
import numpy as np
import pytest
import torch

import cv2_recipe
from latentsync.errors import NoFaceError
from latentsync.face.base import usable_faces
from latentsync.face.choice import LargestFace
from latentsync.face.detectors import available_detectors, create_detector
from latentsync.face.geometry import CropGeometry, lanczos4_table, resize_lanczos4_u8, transform_points
from latentsync.face.stage import AlignedBatch, FaceStage, no_face_error

STRIDE = int(os.environ.get("LATENTSYNC_FACE_TEST_STRIDE", "5"))
R = 512
CLIPS = ["demo1_video.mp4", "demo2_video.mp4"]


def decode(path, stride):
    """Yield (index, RGB frame) for every ``stride``-th frame, streaming."""
    with av.open(str(path)) as c:
        c.streams.video[0].thread_type = "AUTO"
        for i, f in enumerate(c.decode(video=0)):
            if i % stride == 0:
                yield i, f.to_ndarray(format="rgb24")


@pytest.fixture(scope="module")
def detector():
    ok, reason = available_detectors()["dlib"]
    if not ok:
        pytest.skip(reason)
    det = create_detector("dlib")
    yield det
    det.close()


@pytest.fixture(scope="module", params=CLIPS)
def clip(request, media_dir, detector):
    """Detect on the sampled frames in windows of 16; keep all anchors but only a few frames in memory: the first
    6 and 8 spread over the clip. Returns (name, shape, anchors, kept frame indices, kept frames)."""
    anchors, kept, shape, window = [], {}, None, []

    def flush():
        anchors.extend(detector.detect(np.stack([f for _, f in window])))
        window.clear()

    for n, (i, frame) in enumerate(decode(media_dir / request.param, STRIDE)):
        shape = frame.shape
        window.append((i, frame))
        if n < 6 or n % 12 == 0:
            kept[n] = frame
        if len(window) == 16:
            flush()
    if window:
        flush()
    return request.param, shape, anchors, kept


@pytest.fixture(scope="module")
def aligned(clip, detector):
    name, shape, anchors, kept = clip
    rows = [n for n in sorted(kept) if n % 12 == 0][:8]
    sub = np.stack([kept[n] for n in rows])
    stage = FaceStage(detector, R)
    return stage, sub, stage.align(sub, anchors=[anchors[n] for n in rows])


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_face_on_every_sampled_frame(clip):
    name, shape, anchors, kept = clip
    assert shape == (1920, 1080, 3)
    missing = [i * STRIDE for i, a in enumerate(anchors) if a is None]
    assert not missing, f"{name}: no face at frames {missing}"
    pts = np.stack(anchors)
    assert (pts[:, 0, 0] < pts[:, 1, 0]).all(), "brow 1 must be the image-left brow"
    assert (pts[:, 2, 1] > pts[:, :2, 1].max(axis=1)).all(), "the nose anchor must lie below the brows"


def test_alignment_lands_anchors_on_template(aligned):
    """A 4-parameter similarity cannot map 3 arbitrary points exactly; what it pins is the centroid (up to the
    reference's sub-pixel smoothing term). That lands within 2 px of the template's centroid on every frame and
    the per-point residual stays within the pose-induced spread measured on the clips."""
    stage, frames, batch = aligned
    geo = stage.geometry
    to_r = torch.tensor([R / geo.crop_size[0], R / geo.crop_size[1]], dtype=torch.float64)
    pts = transform_points(batch.affine.double().cpu(), torch.from_numpy(batch.anchors)) * to_r
    tmpl = torch.from_numpy(geo.template) * to_r
    centroid_err = (pts.mean(dim=1) - tmpl.mean(dim=0)).norm(dim=-1)
    assert centroid_err.max() < 2.0, centroid_err
    residual = (pts - tmpl).norm(dim=-1)
    assert residual.mean() < 15 and residual.max() < 40, residual


def test_exact_similarity_lands_within_2px():
    """Anchors that are an exact similarity image of the template land within 2 px of it (every point)."""
    geo = CropGeometry(R)
    rng = np.random.default_rng(0)
    anchors = []
    for _ in range(16):
        a, s = rng.uniform(-0.4, 0.4), rng.uniform(0.3, 1.5)
        rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        anchors.append(np.round(geo.template / s @ rot.T + rng.uniform(100, 900, 2)))
    stage = FaceStage(None, R)
    m = stage.affine_from_anchors(np.stack(anchors))
    pts = transform_points(m.double(), torch.from_numpy(np.stack(anchors)))
    to_r = torch.tensor([R / geo.crop_size[0], R / geo.crop_size[1]], dtype=torch.float64)
    err = ((pts - torch.from_numpy(geo.template)) * to_r).norm(dim=-1)
    assert err.max() < 2.0, err


def test_smoothing_state_carries_across_windows(clip, detector):
    name, shape, anchors, kept = clip
    pts = np.stack(anchors[:12])
    whole = FaceStage(None, R).affine_from_anchors(pts)
    stage = FaceStage(None, R)
    parts = torch.cat([stage.affine_from_anchors(pts[:5]), stage.affine_from_anchors(pts[5:])])
    assert torch.equal(whole, parts)
    stage.reset()
    assert torch.equal(stage.affine_from_anchors(pts[5:]), FaceStage(None, R).affine_from_anchors(pts[5:]))


def test_restore_of_unmodified_crop(aligned):
    stage, frames, batch = aligned
    assert batch.faces.shape == (len(frames), 3, R, R) and batch.faces.dtype == torch.uint8
    out = stage.restore(frames, batch.faces, batch)
    cw, ch = stage.geometry.crop_size
    for i, frame in enumerate(frames):
        inv = cv2.invertAffineTransform(batch.affine[i].double().numpy())
        corners = np.array([[0, 0], [cw - 1, 0], [cw - 1, ch - 1], [0, ch - 1]], np.float64)
        poly = corners @ inv[:, :2].T + inv[:, 2]
        region = np.zeros(frame.shape[:2], np.uint8)
        cv2.fillConvexPoly(region, np.round(poly).astype(np.int32), 1)
        region = cv2.dilate(region, np.ones((5, 5), np.uint8)).astype(bool)
        assert np.array_equal(out[i][~region], frame[~region]), f"frame {i}: pixels changed outside the paste"
        assert psnr(out[i][region], frame[region]) >= 30


def test_matches_cv2_recipe(aligned):
    """The batched stage against the same recipe done frame by frame with OpenCV."""
    stage, frames, batch = aligned
    for i in range(2):
        m = batch.affine[i].double().numpy()
        ref = cv2_recipe.align_one(frames[i], m, R)
        ours = batch.faces[i].permute(1, 2, 0).numpy()
        diff = np.abs(ref.astype(int) - ours)
        assert diff.max() <= 2 and (diff > 0).mean() < 0.02
        face = batch.faces[i].float().permute(1, 2, 0).numpy() / 127.5 - 1
        ref_out = cv2_recipe.restore_one(frames[i], face, m)
        ours_out = stage.restore(frames[i:i + 1], batch.faces[i:i + 1], _rows(batch, [i]))[0]
        changed = np.abs(ref_out.astype(int) - frames[i]).sum(-1) > 0
        d = np.abs(ref_out.astype(int) - ours_out)
        assert d.max() <= 8 and d[changed].mean() < 0.5


def _rows(batch: AlignedBatch, rows) -> AlignedBatch:
    return AlignedBatch(batch.faces[rows], batch.affine[rows], batch.has_face[rows], batch.anchors[rows])


def test_frames_without_face_pass_through(clip, detector):
    name, shape, anchors, kept = clip
    sub = np.stack([kept[n] for n in range(6)])
    sub[2] = 0  # blacked out
    sub[4, :, :] = 0
    stage = FaceStage(detector, R)
    batch = stage.align(sub)
    assert batch.has_face.tolist() == [True, True, False, True, False, True]
    assert stage.frames_without_face == 2 and stage.frames_seen == 6
    assert (batch.affine[~batch.has_face] == 0).all()
    out = stage.restore(sub, batch.faces, batch)
    assert np.array_equal(out[2], sub[2]) and np.array_equal(out[4], sub[4])
    stage.raise_if_no_face()  # some faces: no error


def test_no_face_error():
    black = np.zeros((3, 320, 180, 3), np.uint8)
    stage = FaceStage(create_detector("dlib"), 256)
    batch = stage.align(black)
    assert not batch.has_face.any() and stage.frames_without_face == 3
    assert np.array_equal(stage.restore(black, batch.faces, batch), black)
    with pytest.raises(NoFaceError) as err:
        stage.raise_if_no_face("clip.mp4")
    msg = str(err.value)
    assert msg == str(no_face_error(3, "clip.mp4"))
    assert "No face" in msg and "clip.mp4" in msg and msg.count(". ") == 0 and msg.endswith(".")


def test_lanczos_matches_opencv_bit_exactly():
    rng = np.random.default_rng(1)
    for h, w, oh, ow in [(560, 420, 512, 512), (280, 210, 256, 256), (37, 90, 64, 20)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[: h // 2] = cv2.GaussianBlur(img[: h // 2], (5, 5), 1.5)
        ref = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_LANCZOS4)
        ours = resize_lanczos4_u8(torch.from_numpy(img).permute(2, 0, 1)[None], (oh, ow))[0].permute(1, 2, 0)
        assert np.array_equal(ours.numpy(), ref)
    assert lanczos4_table(420, 512)[0].shape == (512, 8)


def test_geometry_constants():
    g = CropGeometry(512)
    assert g.crop_size == (420, 560)
    assert CropGeometry(256).crop_size == (210, 280)
    np.testing.assert_allclose(g.template, np.array([[17, 20], [58, 20], [37.5, 40]]) * 5.6)


def test_largest_face_filters():
    boxes = np.array([[0, 0, 40, 100], [0, 0, 100, 100], [0, 0, 150, 120], [0, 0, 400, 100], [0, 0, 150, 150.]])
    scores = np.array([0.9, 0.9, 0.9, 0.9, 0.4])
    assert usable_faces(boxes, scores) == [1, 2]  # too narrow, ok, ok, too wide, low score
    assert LargestFace().choose(boxes, usable_faces(boxes, scores)) == 2  # the largest usable one
    assert LargestFace().choose(boxes[:1], usable_faces(boxes[:1], scores[:1])) is None


def test_detector_registry(tmp_path):
    avail = available_detectors(tmp_path)
    assert set(avail) == {"insightface", "dlib", "auto"}
    ok, reason = avail["insightface"]
    assert not ok and "buffalo_l models not found at" in reason and str(tmp_path) in reason
    assert create_detector("auto", checkpoints_dir=tmp_path).name == "dlib"
    with pytest.raises(ValueError):
        create_detector("nope")
    with pytest.raises(FileNotFoundError):
        create_detector("insightface", checkpoints_dir=tmp_path)


def test_onnx_node_names_reader(tmp_path):
    from latentsync.face.onnx_graph import first_node_names

    def field(num, payload):
        return bytes([num << 3 | 2, len(payload)]) + payload

    graph = field(1, field(3, b"bn_data")) + field(1, field(3, b"conv0")) + field(2, b"g")
    path = tmp_path / "m.onnx"
    path.write_bytes(bytes([1 << 3, 7]) + field(7, graph))  # ir_version varint, then the graph
    assert first_node_names(path) == ["bn_data", "conv0"]
