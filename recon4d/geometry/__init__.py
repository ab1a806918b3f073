"""Cameras, rigid transforms and quaternions: pure tensor functions, no state."""
from recon4d.geometry.camera import (
    intrinsics_matrices,
    intrinsics_matrix,
    invert_pose,
    look_at,
    project_to_pixels,
    transform_points,
)
from recon4d.geometry.quaternion import normalize_quaternion, quaternion_from_rotation, rotation_from_quaternion

__all__ = [
    "intrinsics_matrices", "intrinsics_matrix", "invert_pose", "look_at", "project_to_pixels", "transform_points",
    "normalize_quaternion", "quaternion_from_rotation", "rotation_from_quaternion",
]
