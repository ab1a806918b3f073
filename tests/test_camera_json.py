"""recon4d.io.camera_json: the one camera-JSON writer and reader (a fit's cameras.json and camera paths)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from view_scenes import moving_patch_scene

from recon4d.errors import InputError
from recon4d.geometry import look_at
from recon4d.io.camera_json import (
    CONVENTION,
    camera_entries,
    parse_camera_json,
    read_camera_json,
    scene_cameras_json,
    write_camera_json,
)


@pytest.fixture(scope="module")
def scene():
    scene = moving_patch_scene(num_frames=4, width=48, height=30)
    # Rotated, non-trivial float32 poses and per-frame intrinsics, so a lossy round trip would show.
    up = torch.tensor([0.0, -1.0, 0.0])
    for t in range(4):
        eye = torch.tensor([0.3 * t - 0.4, 0.1 * t, -2.0 + 0.05 * t])
        scene.cameras.world_from_camera[t] = look_at(eye, torch.tensor([0.1, 0.0, 3.0]), up)
    scene.cameras.intrinsics[:, 0] += torch.arange(4) * 0.37
    scene.cameras.timestamps = torch.arange(4, dtype=torch.float32) / 29.97
    return scene


def test_scene_cameras_round_trip(scene, tmp_path):
    path = write_camera_json(tmp_path / "out" / "cameras.json", scene_cameras_json(scene, [5, 9, 13, 17]))
    assert not list(path.parent.glob(".*.tmp"))
    raw = json.loads(path.read_text())
    assert raw["convention"] == CONVENTION and (raw["width"], raw["height"]) == (48, 30)
    assert list(raw["frames"][0]) == ["index", "name", "source_index", "timestamp", "world_from_camera",
                                      "fx", "fy", "cx", "cy", "width", "height"]
    back = read_camera_json(path)
    cams = scene.cameras
    assert len(back) == 4 and (back.width, back.height) == (48, 30)
    assert torch.equal(back.world_from_camera, cams.world_from_camera.double())  # float32 values survive exactly
    assert torch.equal(back.intrinsics, cams.intrinsics.double())
    assert [f["index"] for f in back.fields] == [0, 1, 2, 3]
    assert [f["source_index"] for f in back.fields] == [5, 9, 13, 17]
    assert [f["name"] for f in back.fields] == cams.frame_names
    assert [f["timestamp"] for f in back.fields] == pytest.approx([t / 29.97 for t in range(4)], rel=1e-6)
    # The same cameras give the same bytes (reruns compare cameras.json byte for byte).
    again = write_camera_json(tmp_path / "again.json", scene_cameras_json(scene, [5, 9, 13, 17]))
    assert again.read_bytes() == path.read_bytes()


def test_entries_order_fields_and_default_principal_point(scene, tmp_path):
    entries = camera_entries(scene.cameras.world_from_camera[:2], scene.cameras.intrinsics[:2],
                             note=["a", "b"], time=[0.0, 1.5])
    assert list(entries[1]) == ["world_from_camera", "fx", "fy", "cx", "cy", "time", "note"]
    for entry in entries:
        del entry["cx"], entry["cy"]
    back = parse_camera_json(entries, "path", image_size=(48, 30))
    assert back.intrinsics[:, 2:].tolist() == [[23.5, 14.5]] * 2 and (back.width, back.height) == (None, None)
    assert back.fields == [{"time": 0.0, "note": "a"}, {"time": 1.5, "note": "b"}]
    # A stated image size wins; without any size the principal point is required.
    sized = parse_camera_json({"width": 10, "height": 8, "frames": entries}, "doc", image_size=(48, 30))
    assert sized.intrinsics[0, 2:].tolist() == [4.5, 3.5]
    with pytest.raises(InputError, match="'cx' and 'cy' are needed"):
        parse_camera_json(entries, "path")
    with pytest.raises(ValueError, match="expected 2 cameras"):
        camera_entries(scene.cameras.world_from_camera[:2], scene.cameras.intrinsics[:2], time=[0.0])


def _entry(**changes) -> dict:
    entry = {"world_from_camera": torch.eye(4).tolist(), "fx": 50.0, "fy": 50.0, "cx": 23.5, "cy": 14.5}
    entry.update(changes)
    return entry


BAD_FILES = {
    "syntax": ("[{", "not valid JSON"),
    "binary": (b"\xff\xfe\x00[", "not valid JSON"),
    "empty": ("[]", "non-empty JSON list"),
    "no_cameras": ('{"width": 4}', "non-empty JSON list"),
    "not_object": ("[3]", "expected an object"),
    "shape": (json.dumps([_entry(world_from_camera=[[1, 0, 0], [0, 1, 0]])]), "4x4"),
    "text_pose": (json.dumps([_entry(world_from_camera="eye")]), "4x4"),
    "scaled": (json.dumps([_entry(world_from_camera=(2 * torch.eye(4)).tolist())]), "rigid"),
    "mirrored": (json.dumps([_entry(world_from_camera=torch.diag(torch.tensor([1.0, 1, -1, 1])).tolist())]), "rigid"),
    "nan_focal": (json.dumps([_entry(fx=math.nan)]), "'fx' must be a finite number"),
    "string_focal": (json.dumps([_entry(fy="50")]), "'fy' must be a finite number"),
    "negative_focal": (json.dumps([_entry(fx=-1.0)]), "focal lengths must be positive"),
    "bad_size": (json.dumps({"width": 0, "height": 8, "frames": [_entry()]}), "'width' must be a positive integer"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_raise_one_line_input_errors(tmp_path, name):
    content, message = BAD_FILES[name]
    path = tmp_path / f"{name}.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=message) as raised:
        read_camera_json(path, image_size=(48, 30))
    assert "\n" not in raised.value.one_line() and str(path) in raised.value.one_line()


def test_missing_file_and_directory(tmp_path):
    for path in (tmp_path / "absent.json", tmp_path):
        with pytest.raises(InputError, match="camera JSON file not found"):
            read_camera_json(path)
