"""Face stage: detection backends, LatentSync 1.6 alignment, soft restore.

    base.py           the detector interface (boxes, anchors, the reference's acceptance rules, a thread pool)
    insightface.py    buffalo_l SCRFD + 106 landmarks with onnxruntime (onnx_graph.py reads its graph's names)
    dlib_detector.py  the offline fallback
    choice.py         which face: the largest (published) or one person followed
    detectors.py      the detectors by name: create_detector, available_detectors
    geometry.py       the crop template, similarity fit, smoothing, exact Lanczos resize
    stage.py          FaceStage: detect -> align (warp) and restore (paste back)

Names are imported from the module that defines them (this file imports nothing).
"""
