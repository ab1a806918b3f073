"""What users take away from a fitted scene: splat files, cameras, meshes and masks.

One module per kind of output; heavy libraries (plyfile, gsply, pycolmap, open3d, trimesh) are imported
only when that output is written.

    export_ply(scene, out_dir, frames="all", format="ply")       3DGS PLY / SPZ / compressed PLY per frame
    export_cameras(scene, out_dir, frames_rgb=None)              nerfstudio transforms.json + COLMAP text
    export_mesh(scene, path, frame=None, static_only=False)      TSDF mesh (PLY / OBJ / GLB)
    export_meshes(scene, out_dir, frames="all")                  one mesh per frame
    export_masks(scene, out_dir)                                 moving masks as 0/255 PNGs
"""

from recon4d.export.cameras import export_cameras, read_colmap_text, read_transforms_json
from recon4d.export.masks import export_masks
from recon4d.export.mesh import MeshConfig, MeshStats, export_mesh, export_meshes
from recon4d.export.ply import export_ply, read_3dgs_ply

__all__ = [
    "export_cameras",
    "read_colmap_text",
    "read_transforms_json",
    "export_masks",
    "MeshConfig",
    "MeshStats",
    "export_mesh",
    "export_meshes",
    "export_ply",
    "read_3dgs_ply",
]
