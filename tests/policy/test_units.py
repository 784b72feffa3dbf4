"""Quantities as users write them: sizes, CPUs, durations."""

import pytest
from mlq.executor.units import format_size, parse_cpus, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("32Gi", 32 * 2**30, id="binary gibibytes"),
        pytest.param("32G", 32 * 10**9, id="decimal gigabytes"),
        pytest.param("512Mi", 512 * 2**20, id="mebibytes"),
        pytest.param(1024, 1024, id="a plain integer is bytes"),
        pytest.param("1.5Gi", 3 * 2**29, id="fractions of a unit"),
    ],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["32GB", "lots", "-1Gi", -5, True, "1 Gb"])
def test_bad_sizes_say_what_is_allowed(bad):
    with pytest.raises(ValueError, match="32Gi"):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "milli"), [("2", 2000), (0.5, 500), ("500m", 500), (8, 8000), ("1.25", 1250)]
)
def test_cpus(text, milli):
    assert parse_cpus(text) == milli


@pytest.mark.parametrize("bad", ["0", 0, "-1", "two", "5x"])
def test_bad_cpus(bad):
    with pytest.raises(ValueError, match="500m"):
        parse_cpus(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("12h", 43200),
        ("1d", 86400),
        ("1h30m", 5400),
        (120, 120),
        ("01:00:00", 3600),
        ("2-00:00:00", 172800),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "10x", "-5s", "h"])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="15m"):
        parse_duration(bad)


def test_format_size_round_trips():
    assert format_size(parse_size("28Gi")) == "28Gi"
    assert format_size(1000) == "1000"
