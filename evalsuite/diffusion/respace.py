"""Timestep respacing: which original timesteps a shortened sampling chain keeps (ADM protocol §4)."""

from __future__ import annotations

import re

from evalsuite.runtime.errors import EvalsuiteError

_GRAMMAR = (
    'expected "" (all steps), a step count such as "250", comma-separated counts per equal '
    'section such as "10,20,30", or "ddimN" such as "ddim25"'
)
_COUNTS = re.compile(r"[0-9]+(,[0-9]+)*")
_DDIM = re.compile(r"ddim([0-9]+)")


def space_timesteps(num_steps: int, spec: str) -> list[int]:
    """Original timesteps kept by the respacing string ``spec`` ("timestep_respacing").

    Grammar (ADM protocol §4):

    - ``""``: all ``num_steps`` steps.
    - ``"N"`` or ``"a,b,c"``: the chain [0, num_steps) is cut into as many equal sections as
      there are counts (size_per = num_steps // sections; the first num_steps % sections
      sections get one extra step); a section of ``size`` steps asked for ``c`` steps keeps
      ``start + round(cur)`` with ``cur`` advancing by (size-1)/(c-1) (1 when c <= 1).
    - ``"ddimN"``: range(0, num_steps, i) for the first integer stride i in 1..num_steps-1
      that gives exactly N steps.

    Args:
        num_steps: T, the length of the original chain (>= 1).
        spec: the respacing string; surrounding whitespace and spaces after commas are ignored.

    Returns:
        The kept original timesteps, sorted ascending, without duplicates; index i of the
        respaced chain stands for original timestep ``result[i]``.

    Raises:
        EvalsuiteError: the string does not follow the grammar or asks for steps that do not exist.
    """
    if num_steps < 1:
        raise EvalsuiteError(f"num_steps must be >= 1, got {num_steps}")
    text = spec.replace(" ", "")
    if text == "":
        return list(range(num_steps))
    ddim = _DDIM.fullmatch(text)
    if ddim is not None:
        return _ddim_timesteps(num_steps, int(ddim.group(1)), spec)
    if _COUNTS.fullmatch(text) is None:
        raise EvalsuiteError(f"invalid timestep respacing {spec!r}: {_GRAMMAR}")
    return _section_timesteps(num_steps, [int(count) for count in text.split(",")], spec)


# "ddimN": the first integer stride giving exactly N steps (ADM protocol §4).
def _ddim_timesteps(num_steps: int, desired_count: int, spec: str) -> list[int]:
    for stride in range(1, num_steps):
        if len(range(0, num_steps, stride)) == desired_count:
            return list(range(0, num_steps, stride))
    raise EvalsuiteError(
        f"invalid timestep respacing {spec!r}: no integer stride gives exactly {desired_count} "
        f"of {num_steps} steps; {_GRAMMAR} (e.g. ddim25, ddim50, ddim100, ddim250 for 1000 steps)"
    )


# "N" / "a,b,c": evenly strided counts inside equal sections (ADM protocol §4).
def _section_timesteps(num_steps: int, section_counts: list[int], spec: str) -> list[int]:
    if len(section_counts) > num_steps:
        raise EvalsuiteError(
            f"invalid timestep respacing {spec!r}: {len(section_counts)} sections for "
            f"{num_steps} steps; {_GRAMMAR}"
        )
    size_per = num_steps // len(section_counts)
    extra = num_steps % len(section_counts)
    start = 0
    kept: set[int] = set()
    for section, count in enumerate(section_counts):
        size = size_per + (1 if section < extra else 0)
        if count < 1 or count > size:
            raise EvalsuiteError(
                f"invalid timestep respacing {spec!r}: section {section} has {size} steps and "
                f"cannot take {count} (each count must be between 1 and its section size); "
                f"{_GRAMMAR}"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            kept.add(start + round(cur))
            cur += stride
        start += size
    return sorted(kept)
