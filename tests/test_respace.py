"""Timestep respacing: parity with the reference lists and the grammar's error cases."""

import ast
from pathlib import Path

import pytest

from evalsuite.diffusion import space_timesteps
from evalsuite.runtime.errors import EvalsuiteError

# Lists computed by guided-diffusion's space_timesteps(1000, spec) (see the file's header).
REFERENCE_LISTS = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "respacing_lists.txt"
)


def _reference_cases() -> list[tuple[str, int, list[int]]]:
    cases = []
    for line in REFERENCE_LISTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        spec, rest = line.split(" (n=", 1)
        count, listing = rest.split("): ", 1)
        cases.append((spec, int(count), ast.literal_eval(listing)))
    return cases


def test_reference_file_has_every_published_spec():
    specs = [spec for spec, _, _ in _reference_cases()]
    assert {"250", "100", "50", "25", "ddim25", "ddim50", "ddim100", "ddim250", "10,20,30"} <= set(
        specs
    )


@pytest.mark.parametrize("spec,count,expected", _reference_cases())
def test_parity_with_reference_lists(spec, count, expected):
    kept = space_timesteps(1000, spec)
    assert kept == expected
    assert len(kept) == count


def test_empty_and_full_count_keep_all_steps():
    assert space_timesteps(1000, "") == list(range(1000))
    assert space_timesteps(1000, "1000") == list(range(1000))
    assert space_timesteps(1000, "ddim1000") == list(range(1000))


def test_small_chain_by_hand():
    # One section of 10 steps taking 3: stride 9/2 = 4.5 -> 0, round(4.5) = 4 (banker's), 9.
    assert space_timesteps(10, "3") == [0, 4, 9]
    # Two sections of sizes 6 and 5 (first gets the extra step): 0, 5 | 6, 8, 10.
    assert space_timesteps(11, "2,3") == [0, 5, 6, 8, 10]
    # A count of 1 keeps the start of its section.
    assert space_timesteps(10, "1,1") == [0, 5]
    # ddim: first stride with exactly N elements: range(0, 10, 3) has 4.
    assert space_timesteps(10, "ddim4") == [0, 3, 6, 9]


def test_whitespace_is_ignored():
    assert space_timesteps(1000, " 10, 20,30 ") == space_timesteps(1000, "10,20,30")


@pytest.mark.parametrize(
    "num_steps,spec",
    [
        (1000, "abc"),
        (1000, "ddim"),
        (1000, "0"),
        (1000, "-5"),
        (1000, "2.5"),
        (1000, "10,,20"),
        (1000, "10,20,"),
        (1000, "ddim-5"),
        (1000, "ddim999"),
        (1000, "ddim1"),
        (10, "ddim7"),
        (1000, "1001"),
        (1000, "400,400,400"),
        (1000, "10,0,30"),
        (3, "1,1,1,1"),
    ],
)
def test_invalid_specs_raise_one_line_error(num_steps, spec):
    with pytest.raises(EvalsuiteError) as info:
        space_timesteps(num_steps, spec)
    message = str(info.value)
    assert "\n" not in message
    assert repr(spec) in message
    assert '"ddimN"' in message
