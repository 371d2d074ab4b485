"""Frame sources and the revisit store."""

import numpy as np
import pytest

from latentsync.frames import ArraySource, FrameStore, pingpong_index, to_uint8


@pytest.mark.parametrize("on_disk", [False, True])
def test_store_returns_records_by_index_and_cleans_up(on_disk, tmp_path):
    rng = np.random.default_rng(0)
    records = rng.integers(0, 256, size=(7, 5, 4, 3), dtype=np.uint8)
    with FrameStore(7, (5, 4, 3), on_disk, cache_dir=str(tmp_path)) as store:
        store.write(0, records[:3])
        store.write(3, records[3:])
        picked = [6, 0, 3, 3, 5]
        assert np.array_equal(store.read(picked), records[picked])
        assert (len(list(tmp_path.iterdir())) == 1) == on_disk  # the private folder exists only on disk
    assert list(tmp_path.iterdir()) == []


def test_pingpong_plays_forward_backward_forward():
    assert [pingpong_index(i, 3) for i in range(10)] == [0, 1, 2, 2, 1, 0, 0, 1, 2, 2]


def test_array_source_accepts_comfyui_float_images():
    frames = np.linspace(0, 1, 2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3)
    source = ArraySource(frames, 29.97)
    assert source.fps.numerator == 30000 and source.fps.denominator == 1001
    batch = next(source.batches(8))
    assert batch.dtype == np.uint8 and batch[0, 0, 0, 0] == 0 and batch[-1, -1, -1, -1] == 255
    assert np.array_equal(to_uint8(batch), batch)
    with pytest.raises(ValueError, match="N, H, W, 3"):
        ArraySource(frames[..., :2], 25)
