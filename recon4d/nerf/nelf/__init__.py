"""One-pass neural light fields distilled from a fitted Gaussian scene: MobileR2L-style and NeRDF students.

    from recon4d.nerf.nelf import distill, preset_config, render_path_with_student
    metrics = distill("out/cup", "out/cup_r2l", preset_config("r2l"))          # also writes model.onnx
    frames = render_path_with_student("out/cup_r2l", scene, views, width, height)

Modules: config (presets), rays, teacher (splat teacher, camera sampling), r2l and nerdf (students), student
(model folder), views (pseudo and real views), train (loop, checkpoints), onnx_export, evaluate, distill,
render.
"""
from recon4d.nerf.nelf.config import MODEL_NAMES, PRESET_NAMES, DistillConfig, preset_config, with_overrides
from recon4d.nerf.nelf.distill import distill
from recon4d.nerf.nelf.onnx_export import export_and_verify
from recon4d.nerf.nelf.render import RENDERERS, render_path_with_student
from recon4d.nerf.nelf.student import load_student

__all__ = [
    "MODEL_NAMES",
    "PRESET_NAMES",
    "RENDERERS",
    "DistillConfig",
    "distill",
    "export_and_verify",
    "load_student",
    "preset_config",
    "render_path_with_student",
    "with_overrides",
]
