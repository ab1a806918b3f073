"""Mask export: one lossless 0/255 PNG per frame, clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from test_scene import make_scene

from recon4d.errors import InputError, SceneError
from recon4d.export.masks import export_masks


def test_masks_round_trip(tmp_path):
    scene = make_scene(num_frames=4)
    paths = export_masks(scene, tmp_path)
    assert [p.name for p in paths] == [f"mask_{t:04d}.png" for t in range(4)]
    for t, path in enumerate(paths):
        png = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and png.shape == (48, 64)
        assert set(np.unique(png)) <= {0, 255}
        assert np.array_equal(png == 255, scene.arrays["moving_masks"][t].numpy())
    assert not list(tmp_path.glob(".*")), "temporary file left behind"


def test_soft_masks_and_frame_selection(tmp_path):
    scene = make_scene(num_frames=3)
    soft = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(4))
    scene.arrays["moving_masks"] = soft
    (path,) = export_masks(scene, tmp_path, frames=-1)
    assert path.name == "mask_0002.png"
    png = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(png == 255, soft[2].numpy() >= 0.5)


def test_errors(tmp_path):
    scene = make_scene(num_frames=2)
    with pytest.raises(InputError, match="outside the scene"):
        export_masks(scene, tmp_path, frames=[0, 2])
    scene.arrays["moving_masks"] = torch.zeros(3, 48, 64, dtype=torch.bool)
    with pytest.raises(SceneError, match="expected"):
        export_masks(scene, tmp_path)
    del scene.arrays["moving_masks"]
    with pytest.raises(SceneError, match="no moving masks"):
        export_masks(scene, tmp_path)
    assert not list(tmp_path.iterdir())
