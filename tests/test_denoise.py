"""The seeded denoiser reproduces the published pipeline's output on the reference's tiny run."""

import numpy as np
import pytest
import torch

from latentsync.mask import load_mouth_mask
from latentsync.options import PipelineOptions
from helpers import chunks_of, make_denoiser


def pixels_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> 0..255 uint8, rounding down like the reference's ``(x / 2 + 0.5).clamp(0, 1) * 255``."""
    return ((pixels / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8)


def test_initial_noise_is_the_reference_draw(reference_pipeline):
    denoiser = make_denoiser(reference_pipeline)
    denoiser.start()
    expected = reference_pipeline[1]["initial_latents"]
    torch.testing.assert_close(denoiser.initial_noise.expand_as(expected), expected, rtol=0, atol=0)


@pytest.mark.parametrize("chunks_per_call,vae_batch", [(1, 16), (2, 3)])
def test_reproduces_reference_pixels(reference_pipeline, chunks_per_call, vae_batch):
    """Batching chunks through the UNet and splitting VAE calls must not change the result."""
    spec, tensors = reference_pipeline[0], reference_pipeline[1]
    denoiser = make_denoiser(reference_pipeline, chunks_per_call=chunks_per_call, vae_batch=vae_batch)
    denoiser.start()
    steps_seen = []
    out = denoiser.run(chunks_of(tensors, spec["num_frames"]), on_step=lambda done, total: steps_seen.append(done))
    pixels = torch.cat(out)
    assert pixels.shape == tensors["out_pixels"].shape
    assert (pixels - tensors["out_pixels"]).abs().max().item() <= 2e-3
    assert steps_seen.count(spec["inference_steps"]) == (2 if chunks_per_call == 1 else 1)


def test_short_last_chunk_and_seed_matter(reference_pipeline):
    """A video whose length is not a multiple of the chunk size works; another seed gives another mouth."""
    spec, tensors = reference_pipeline[0], reference_pipeline[1]
    denoiser = make_denoiser(reference_pipeline)
    denoiser.start()
    first = torch.cat(denoiser.run(chunks_of({k: v[:6] for k, v in tensors.items()}, spec["num_frames"])))
    assert first.shape[0] == 6
    # the first chunk only depends on draws made before it: same as the full reference run
    assert (first[:4] - tensors["out_pixels"][:4]).abs().max().item() <= 2e-3
    denoiser.start(seed=spec["seed"] + 1)
    other = torch.cat(denoiser.run(chunks_of(tensors, spec["num_frames"])))
    mouth = torch.from_numpy(load_mouth_mask(spec["resolution"]).copy()) < 0.5
    assert (other - tensors["out_pixels"]).abs()[:, mouth].max().item() > 1e-2


def test_paste_keeps_original_outside_mouth(reference_pipeline):
    spec, tensors = reference_pipeline[0], reference_pipeline[1]
    denoiser = make_denoiser(reference_pipeline)
    denoiser.start()
    out = torch.cat(denoiser.run(chunks_of(tensors, spec["num_frames"])))
    keep = tensors["mask"] == 1.0
    original = tensors["faces"] / 255.0 * 2 - 1
    assert torch.equal(pixels_to_uint8(out)[:, keep], pixels_to_uint8(original)[:, keep])


def seam(faces: torch.Tensor, mouth: np.ndarray) -> float:
    """Mean absolute step between neighbouring pixels on either side of the mouth's edge (faces (N, 3, R, R))."""
    steps = []
    for axis in (1, 2):  # rows, columns of (R, R)
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        crossing = torch.from_numpy(mouth[tuple(a)[1:]] != mouth[tuple(b)[1:]])
        step = (faces[(slice(None),) + tuple(a)] - faces[(slice(None),) + tuple(b)]).abs()
        steps.append(step[:, :, crossing].flatten())
    return torch.cat(steps).mean().item()


@pytest.mark.parametrize("feather", [3, 6])
def test_mouth_feather_changes_only_the_blend_near_the_edge_and_softens_the_seam(reference_pipeline, feather):
    from scipy.ndimage import distance_transform_edt

    spec, tensors = reference_pipeline[0], reference_pipeline[1]
    outputs = []
    for width in (0, feather):
        denoiser = make_denoiser(reference_pipeline, mouth_feather=width)
        denoiser.start()
        outputs.append(torch.cat(denoiser.run(chunks_of(tensors, spec["num_frames"]))))
    hard, soft = outputs
    assert (hard - tensors["out_pixels"]).abs().max().item() <= 2e-3  # 0: the published blend
    mouth = tensors["mask"][0].numpy() < 0.5
    # each pixel's distance to the edge (scipy's transform; the library uses OpenCV's), half a pixel off the centres
    distance = np.where(mouth, distance_transform_edt(mouth), distance_transform_edt(~mouth)) - 0.5
    changed = (hard != soft).any(dim=1).any(dim=0).numpy()
    assert changed.any() and distance[changed].max() < feather  # the UNet's input and output did not change
    assert seam(soft, mouth) < 0.7 * seam(hard, mouth)


def test_mouth_mask_matches_reference_resize(reference_pipeline):
    _, tensors, _, _ = reference_pipeline
    torch.testing.assert_close(torch.from_numpy(load_mouth_mask(64).copy()), tensors["mask"], rtol=0, atol=1e-6)


def test_options_reject_out_of_range():
    """The user's values are checked once, where they enter (PipelineOptions); the denoiser takes them checked."""
    with pytest.raises(ValueError, match="inference_steps"):
        PipelineOptions(steps=0)
    with pytest.raises(ValueError, match="lips_expression must be between 1.0 and 3.0"):
        PipelineOptions(guidance_scale=0.5)
    with pytest.raises(ValueError, match="lips_expression must be between 1.0 and 3.0"):  # the documented range
        PipelineOptions(guidance_scale=5.0)
    with pytest.raises(ValueError, match="lips_expression must be a number"):
        PipelineOptions(guidance_scale=float("nan"))
