"""`recon4d gen sample`: text -> latents -> scene directories, with the solvers of the model directory.

Solvers (NFE = velocity evaluations per sample, CFG doubles the batch, not the NFE):
    euler    K uniform Euler steps of the 1-RF model (or of the 2-RF model with --reflow)
    heun     K Heun steps (2 evaluations each)
    boss     K Euler steps on the BOSS schedule stored for K in MODEL_DIR/boss.json (with the model finetuned
             on that schedule, MODEL_DIR/boss_<kind>_k<K>.safetensors, when there is one)
    turbo    FlowTurbo: Heun + pseudo-corrector steps + the velocity refiner (MODEL_DIR/refiner.safetensors)
    onestep  the distilled student: x1 = x0 + v(x0, 0) (MODEL_DIR/onestep.safetensors)
The default solver, auto, is the one-step student at `--steps 1` (when the model directory has one) and
Euler otherwise.

The viewer's "Generate" panel calls `Generator(model_dir).generate(prompt, steps, seed)` and
`write_scene_dirs(...)` like the command does.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from recon4d.errors import InputError
from recon4d.gen.data import UNCONDITIONAL
from recon4d.gen.decode import PreviewConfig, check_output_dir, write_scene_dir
from recon4d.gen.flow import euler, guided, heun, uniform_times
from recon4d.gen.latents import channel_indices, to_gaussians
from recon4d.gen.mmdit import MMDiT, ModelConfig
from recon4d.gen.model_io import KINDS, load_model_file, resolve_model_dir
from recon4d.gen.text import TextEncoder
from recon4d.render.config import RasterConfig

SOLVERS = ("auto", "euler", "heun", "boss", "turbo", "onestep")
MAX_STEPS = 1000
MAX_PROMPT_CHARS = 300
DEFAULT_CFG = 3.0


@dataclass
class SampleRequest:
    """One `gen sample` call: prompt, solver, NFE budget, guidance, seed and how many samples."""

    prompt: str
    steps: int = 8
    solver: str = "auto"
    cfg: float | None = None
    seed: int = 0
    num: int = 1
    reflow: bool = False


def check_request(request: SampleRequest) -> None:
    if not request.prompt.strip():
        raise InputError("the prompt is empty", hint='e.g. recon4d gen sample "a red mug" -o out/mug')
    if len(request.prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters")
    if not 1 <= request.steps <= MAX_STEPS:
        raise InputError(f"--steps must be between 1 and {MAX_STEPS}, got {request.steps}")
    if request.solver not in SOLVERS:
        raise InputError(f"--solver must be one of {', '.join(SOLVERS)}, got {request.solver!r}")
    if not 1 <= request.num <= 256:
        raise InputError(f"--num must be between 1 and 256, got {request.num}")
    if request.cfg is not None and not 0 <= request.cfg <= 50:
        raise InputError(f"--cfg must be between 0 and 50, got {request.cfg}")


class Generator:
    """A model directory ready to sample: its velocity models (loaded on first use, on `device`) and the text
    encoder. Noise, solver states and results stay on the CPU (`flow.guided` evaluates on the model's device),
    so a seed gives the same noise on every device."""

    def __init__(self, model_dir: Path | None = None, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model_dir = resolve_model_dir(model_dir)
        self.main = load_model_file(self.model_dir / KINDS["rf1"], "rf1")
        self.stats = self.main.stats
        self.model_config = ModelConfig(**self.main.config)
        self.text = TextEncoder(self.model_dir / "text_cache.safetensors")

    def has(self, kind: str) -> bool:
        return (self.model_dir / KINDS[kind]).is_file()

    @functools.cache
    def velocity_model(self, kind: str) -> MMDiT:
        stored = self.main if kind == "rf1" else load_model_file(self.model_dir / KINDS[kind], kind)
        model = MMDiT(ModelConfig(**stored.config))
        model.load_state_dict(stored.state)
        return model.to(self.device).eval().requires_grad_(False)

    def conditions(self, prompts: list[str]) -> tuple[tuple, tuple]:
        """(cond, uncond) text inputs for a batch of prompts, padded to one length."""
        from recon4d.gen.text import collate

        embeddings = self.text.embed(list(prompts) + [UNCONDITIONAL])
        tokens, mask, pooled = collate(embeddings)
        n = len(prompts)
        uncond = (tokens[n:].expand(n, -1, -1), mask[n:].expand(n, -1), pooled[n:].expand(n, -1))
        return (tokens[:n], mask[:n], pooled[:n]), uncond

    def noise(self, num: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn((num, self.model_config.num_gaussians, 14), generator=generator)

    def velocity(self, kind: str, prompts: list[str], cfg: float):
        cond, uncond = self.conditions(prompts)
        return guided(self.velocity_model(kind), cond, uncond, cfg, self.guidance_channels(kind))

    @functools.cache
    def _info(self, kind: str) -> dict:
        stored = self.main if kind == "rf1" else load_model_file(self.model_dir / KINDS[kind], kind)
        return stored.info

    def default_cfg(self, kind: str) -> float:
        return float(self._info(kind).get("default_cfg", DEFAULT_CFG))

    def guidance_channels(self, kind: str) -> list[int] | None:
        """The latent channels that guidance (default or --cfg) acts on for model `kind`; None: all."""
        return channel_indices(self._info(kind).get("guidance_channels") or []) or None

    @torch.no_grad()
    def generate_standardized(self, request: SampleRequest, x0: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised latents [num, G, 14] for a request (x0: the noise, default from the seed)."""
        check_request(request)
        x0 = self.noise(request.num, request.seed) if x0 is None else x0
        return self.solve([request.prompt] * x0.shape[0], x0, request)

    @torch.no_grad()
    def solve(self, prompts: list[str], x0: torch.Tensor, request: SampleRequest) -> torch.Tensor:
        """Standardised latents [B, G, 14] from noise x0 [B, G, 14], one prompt per row, with the request's
        solver, steps, guidance and model (its prompt and seed are not used)."""
        solver = request.solver
        if solver == "auto":  # the one-step student for a one-evaluation budget, Euler otherwise
            solver = "onestep" if request.steps == 1 and self.has("onestep") else "euler"
        if solver == "onestep":
            self._need("onestep")
            return onestep_sample(self.velocity("onestep", prompts, self._cfg(request, "onestep")), x0)
        kind = "rf2" if request.reflow else "rf1"
        if request.reflow:
            self._need("rf2")
        velocity = self.velocity(kind, prompts, self._cfg(request, kind))
        if solver == "euler":
            return euler(velocity, x0, uniform_times(request.steps))
        if solver == "heun":
            return heun(velocity, x0, uniform_times(max(1, request.steps // 2)))
        if solver == "boss":  # the BOSS schedule; the model finetuned on it when the model directory has one
            from recon4d.gen.boss import load_finetuned, load_schedule

            schedule = load_schedule(self.model_dir, request.steps, kind)
            finetuned = load_finetuned(self.model_dir, kind, request.steps)
            if finetuned is not None:
                velocity = guided(finetuned.to(self.device), *self.conditions(prompts), self._cfg(request, kind),
                                  self.guidance_channels(kind))
            return euler(velocity, x0, schedule)
        from recon4d.gen.turbo import load_refiner, turbo_sample

        self._need("refiner")
        return turbo_sample(velocity, load_refiner(self.model_dir), x0, request.steps)

    def _cfg(self, request: SampleRequest, kind: str) -> float:
        return request.cfg if request.cfg is not None else self.default_cfg(kind)

    def _need(self, kind: str) -> None:
        if not self.has(kind):
            raise InputError(f"the model in {self.model_dir} has no {KINDS[kind]}",
                             hint=f"train it with `recon4d gen train ... --stages {kind}`")

    def generate(self, request: SampleRequest) -> torch.Tensor:
        """Canonical latents [num, G, 14] (de-standardised) for a request."""
        return self.stats.destandardize(self.generate_standardized(request))


def onestep_sample(velocity, x0: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """The one-step student: x1 = x0 + v(x0, t=0)."""
    return x0 + velocity(x0, torch.zeros(x0.shape[0]))


def write_scene_dirs(latents: torch.Tensor, out: Path, prompt: str, config: PreviewConfig = PreviewConfig(),
                     info: dict | None = None, raster: RasterConfig = RasterConfig()) -> list[Path]:
    """One sample: OUT/scene.r4d (+ preview.mp4, contact.png); several: OUT/sample_000/ ... . `raster`: the filter
    of the latents the model learnt (`LatentStats.raster`)."""
    check_output_dir(out)
    paths = []
    for index, latent in enumerate(latents):
        target = out if latents.shape[0] == 1 else out / f"sample_{index:03d}"
        gaussians = to_gaussians(latent)
        paths.append(write_scene_dir(target, gaussians, torch.zeros(3), 1.0, config,
                                     {"prompt": prompt, "sample": index, **(info or {})}, raster=raster))
    return paths


def sample_to_dirs(request: SampleRequest, out: Path, model_dir: Path | None = None,
                   device: torch.device | str = "cpu") -> list[Path]:
    """What `recon4d gen sample` does: validate, generate (velocity models on `device`), write scene directories."""
    check_request(request)
    check_output_dir(out)
    generator = Generator(model_dir, device)
    latents = generator.generate(request)
    return write_scene_dirs(latents, out, request.prompt, info={"solver": request.solver, "steps": request.steps,
                                                               "seed": request.seed, "model": str(generator.model_dir)},
                            raster=generator.stats.raster)

