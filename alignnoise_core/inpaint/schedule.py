"""RePaint's resampling walk (``andreas128/RePaint:guided_diffusion/scheduler.py::get_schedule_jump``)
over the indices of a SIGMAS list.

The walk is over times ``t = t_T−1 … −1``; time ``t`` is sigma index ``t_T − 1 − t``, so a descending
pair (t, t−1) is the model step ``sigmas[i] -> sigmas[i+1]`` and an ascending pair (t, t+1) is one
re-noise step ``sigmas[i] -> sigmas[i−1]``. DDNM's time travel uses the same walk
(``wyhuai/DDNM::get_schedule_jump(T_sampling, travel_length, travel_repeat)``).
"""

from __future__ import annotations


def get_schedule_jump(t_T: int, n_sample: int = 1, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """The times of RePaint's walk, from ``t_T − 1`` down to ``−1``.

    Jump points are ``range(0, t_T − jump_length, jump_length)``; at each of them the walk goes up
    ``jump_length`` steps ``jump_n_sample − 1`` times. ``n_sample > 1`` adds RePaint's one-step
    back-and-forth. (250, 1, 10, 10) gives 4,571 entries: 2,410 descending + 2,160 ascending pairs.
    """
    if t_T < 1 or n_sample < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"get_schedule_jump needs positive integers, got t_T={t_T}, n_sample={n_sample}, "
                         f"jump_length={jump_length}, jump_n_sample={jump_n_sample}")
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, ts = t_T, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if t + 1 < t_T - 1:
            for _ in range(n_sample - 1):
                t += 1
                ts.append(t)
                if t >= 0:
                    t -= 1
                    ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    ts.append(-1)
    return ts


def check_jump_fits(n_steps: int, jump_length: int, jump_n_sample: int, what: str = "SIGMAS") -> None:
    """Refuse a walk that cannot jump: with ``jump_n_sample > 1`` there must be more than
    ``jump_length`` steps, else the resampling silently never happens."""
    if n_steps < 1:
        raise ValueError(f"{what} must hold at least two noise levels (one step), got {n_steps + 1}.")
    if jump_n_sample > 1 and n_steps <= jump_length:
        raise ValueError(
            f"{what} has {n_steps} steps, too short for jump_length {jump_length}: resampling needs at least "
            f"{jump_length + 1} steps. Use more steps or a smaller jump_length.")


def jump_transitions(n_steps: int, jump_length: int, jump_n_sample: int, n_sample: int = 1) -> list[tuple[int, int]]:
    """The walk as sigma-index pairs ``(i, i_next)``: ``i_next = i + 1`` is a model step,
    ``i_next = i − 1`` a re-noise step. ``n_steps = len(sigmas) − 1``."""
    check_jump_fits(n_steps, jump_length, jump_n_sample)
    ts = get_schedule_jump(n_steps, n_sample, jump_length, jump_n_sample)
    idx = [n_steps - 1 - t for t in ts]
    return list(zip(idx[:-1], idx[1:]))


def schedule_nfe(n_steps: int, jump_length: int, jump_n_sample: int, n_sample: int = 1) -> int:
    """Model evaluations of the walk: its number of descending pairs."""
    return sum(1 for i, j in jump_transitions(n_steps, jump_length, jump_n_sample, n_sample) if j > i)
