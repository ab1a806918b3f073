"""BOSS (Bellman Optimal Step-size Straightening, Nguyen et al. 2023): the best K-step Euler schedule.

Along fine reference paths (N uniform Euler steps of the model, which give x_i and v(x_i, t_i) at every
fine time t_i), the cost of one coarse Euler step from fine index i to j is
    c[i][j] = E || x_i + (t_j - t_i) v(x_i, t_i) - x_j ||^2,
which needs no extra model evaluations. Dynamic programming over c picks the K steps 0 = k_0 < ... < k_K
= N with the least total cost. Schedules for several K are stored in MODEL_DIR/boss.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from recon4d.errors import InputError
from recon4d.gen.flow import Velocity, uniform_times
from recon4d.io.atomic import atomic_path

BOSS_FILE = "boss.json"
BUDGETS = (1, 2, 4, 8, 16, 32)


@torch.no_grad()
def step_costs(velocity: Velocity, x0: torch.Tensor, fine_steps: int) -> torch.Tensor:
    """Cost matrix c [N + 1, N + 1] (upper triangle; inf elsewhere) from reference paths starting at x0 [B, G, C]."""
    times = uniform_times(fine_steps)
    states, velocities = [x0], []
    for t0, t1 in zip(times[:-1], times[1:]):
        v = velocity(states[-1], t0.expand(x0.shape[0]))
        velocities.append(v)
        states.append(states[-1] + (t1 - t0) * v)
    costs = torch.full((fine_steps + 1, fine_steps + 1), float("inf"))
    for i in range(fine_steps):
        for j in range(i + 1, fine_steps + 1):
            jump = states[i] + (times[j] - times[i]) * velocities[i]
            costs[i, j] = float((jump - states[j]).pow(2).mean())
    return costs


def optimal_path(costs: torch.Tensor, steps: int) -> list[int]:
    """Indices 0 = k_0 < ... < k_steps = N minimising sum c[k_m][k_m+1] (Bellman DP), for costs [N+1, N+1]."""
    n = costs.shape[0] - 1
    if not 1 <= steps <= n:
        raise ValueError(f"cannot take {steps} steps on a grid of {n}")
    best = torch.full((steps + 1, n + 1), float("inf"), dtype=torch.float64)
    parent = torch.zeros((steps + 1, n + 1), dtype=torch.long)
    best[0, 0] = 0.0
    c = costs.double()
    for m in range(1, steps + 1):
        for j in range(m, n + 1):
            candidates = best[m - 1, :j] + c[:j, j]
            value, arg = candidates.min(0)
            best[m, j], parent[m, j] = value, arg
    path = [n]
    for m in range(steps, 0, -1):
        path.append(int(parent[m, path[-1]]))
    return path[::-1]


def schedules(costs: torch.Tensor, budgets: tuple[int, ...] = BUDGETS) -> dict[str, list[float]]:
    """Time schedules (lists of K + 1 times in [0, 1]) for each step budget K that fits the fine grid."""
    n = costs.shape[0] - 1
    return {str(k): [i / n for i in optimal_path(costs, k)] for k in budgets if k <= n}


def save_schedules(model_dir: Path, kind: str, table: dict[str, list[float]], info: dict) -> Path:
    path = model_dir / BOSS_FILE
    data = json.loads(path.read_text()) if path.is_file() else {"format": "recon4d.gen.boss", "version": 1}
    data[kind] = {"schedules": table, **info}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return path


def load_schedule(model_dir: Path, steps: int, kind: str = "rf1") -> torch.Tensor:
    """The stored BOSS schedule [steps + 1] of a model; InputError when there is none for this budget."""
    path = model_dir / BOSS_FILE
    try:
        table = json.loads(path.read_text())[kind]["schedules"]
    except (OSError, KeyError, json.JSONDecodeError):
        raise InputError(f"{model_dir} has no BOSS schedules for the {kind} model",
                         hint="train with --stages including boss") from None
    if str(steps) not in table:
        raise InputError(f"no BOSS schedule for {steps} steps; stored: {', '.join(sorted(table, key=int))}")
    return torch.tensor(table[str(steps)])
