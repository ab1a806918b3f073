"""Settings of the viewer, and where in OUT it reads and writes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recon4d.errors import InputError
from recon4d.render.highlight import MotionHighlight

VIEWS_DIR = "views"
PLY_EXPORT_DIR = Path("export") / "ply"
MESH_EXPORT_DIR = Path("export") / "mesh"


@dataclass(frozen=True)
class ViewerConfig:
    """Settings of the viewer.

    Attributes:
        max_still_gaussians: display budget of still Gaussians (decimated above it; renders use all).
        max_moving_gaussians: display budget of moving Gaussians.
        max_still_nodes: still Gaussians are grouped by birth frame (and temporal window) into at most this many nodes; a node
            appears once the time reaches the earliest birth frame in it.
        display_splat_std: median splat standard deviation in display units (keeps float16 covariances in
            their precise range).
        max_frustums: camera frustums drawn along the path (evenly spaced frames).
        frustum_image_long_side: long side in pixels of the frame image shown in a frustum.
        frustum_size_fraction: frustum depth as a fraction of the median scene depth seen from frame 0.
        line_thickness_px: screen thickness of the camera path, frustum and track lines (CSS pixels).
        playback_updates_per_second: how often playback advances the time.
        default_fps: frames per second of playback at speed 1 when the scene has no timestamps.
        time_step: slider resolution in frames (fractional times interpolate the scene).
        max_speed: fastest playback speed (x real time).
        highlight: colours of the motion-highlight mode (`recon4d.render.highlight`, as path videos have it).
        track_grid_columns: columns of the query grid of point tracks (rows follow the aspect ratio).
        track_point_size_fraction: size of track heads as a fraction of the median scene depth.
        mesh_cache_files: exported mesh files kept in the page once shown (the least recently shown go).
        render_height: height in pixels of "render view" images; None uses the scene's image height.
        render_background: RGB in [0, 1] behind the Gaussians in rendered views (viser's page is white).
        near_fraction, far_multiple: client camera clipping planes relative to the median scene depth.
        initial_back_fraction, initial_rise_fraction: where a new browser tab's camera starts: behind and above
            input camera 0 by these fractions of the median scene depth, looking where camera 0 looks.
    """

    max_still_gaussians: int = 400_000
    max_moving_gaussians: int = 150_000
    max_still_nodes: int = 32
    display_splat_std: float = 0.05
    max_frustums: int = 40
    frustum_image_long_side: int = 160
    frustum_size_fraction: float = 0.03
    line_thickness_px: float = 2.0
    playback_updates_per_second: float = 20.0
    default_fps: float = 30.0
    time_step: float = 0.05
    max_speed: float = 4.0
    highlight: MotionHighlight = MotionHighlight()
    track_grid_columns: int = 16
    track_point_size_fraction: float = 0.01
    mesh_cache_files: int = 8
    render_height: int | None = None
    render_background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    near_fraction: float = 1e-3
    far_multiple: float = 1e3
    initial_back_fraction: float = 0.3
    initial_rise_fraction: float = 0.08

    def validate(self) -> None:
        """Raise InputError for settings the viewer cannot work with."""
        positive = {"max_still_gaussians": self.max_still_gaussians, "max_moving_gaussians": self.max_moving_gaussians,
                    "max_still_nodes": self.max_still_nodes, "max_frustums": self.max_frustums,
                    "track_grid_columns": self.track_grid_columns, "mesh_cache_files": self.mesh_cache_files}
        for name, value in positive.items():
            if value < 1:
                raise InputError(f"viewer setting {name} must be >= 1, got {value}")
        if self.render_height is not None and self.render_height < 8:
            raise InputError(f"viewer render height must be >= 8 pixels, got {self.render_height}")
