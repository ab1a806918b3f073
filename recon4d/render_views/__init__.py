"""Novel-view videos of a fitted scene: camera paths (`paths`) and rendering them to mp4/PNG (`video`).

    from recon4d.render_views import make_path, render_path_to_files
    views = make_path(scene, "bullet-time", time=12)
    render_path_to_files(scene, views, "out/render", "bullet-time", width, height, fps=30, extras=("depth",))
"""

from recon4d.io.frames import scene_fps  # re-exported: the CLI reads the fps of a scene from here
from recon4d.render_views.paths import (
    PATH_NAMES,
    ZOOM_MODES,
    PathConfig,
    PathView,
    make_path,
    output_size,
    read_camera_path,
    scene_centre,
    write_camera_path,
)
from recon4d.render_views.video import (
    EXTRAS,
    LAYOUTS,
    RenderedPath,
    ViewRenderConfig,
    render_path,
    render_path_to_files,
    render_view,
    visualise,
    write_outputs,
)

__all__ = [
    "EXTRAS",
    "LAYOUTS",
    "PATH_NAMES",
    "ZOOM_MODES",
    "PathConfig",
    "PathView",
    "RenderedPath",
    "ViewRenderConfig",
    "make_path",
    "output_size",
    "read_camera_path",
    "render_path",
    "render_path_to_files",
    "render_view",
    "scene_centre",
    "scene_fps",
    "visualise",
    "write_camera_path",
    "write_outputs",
]
