"""Tests for keras_sam.schedules: closed forms, validation, serialisation."""

import math

import keras
import pytest

from keras_sam import schedules


@pytest.mark.parametrize("t", [0, 1, 7, 100])
def test_constant(t):
    assert schedules.Constant(0.05)(t) == 0.05


@pytest.mark.parametrize(
    "t, expected",
    # total = 20: x0.1 from epoch 6 (30%), x0.01 from epoch 12 (60%).
    [(0, 0.2), (5, 0.2), (6, 0.02), (11, 0.02), (12, 0.002), (19, 0.002)],
)
def test_step_decay_closed_form(t, expected):
    assert schedules.StepDecay(0.2, total=20)(t) == pytest.approx(expected)


@pytest.mark.parametrize(
    "t, expected", [(0, 0.01), (5, 0.01), (6, 0.1), (11, 0.1), (12, 1.0)]
)
def test_step_increase_closed_form(t, expected):
    assert schedules.StepIncrease(0.01, total=20)(t) == pytest.approx(expected)


def test_step_decay_custom_boundaries_and_factor():
    schedule = schedules.StepDecay(
        1.0, total=10, boundaries=(0.5,), factor=0.5
    )
    assert [schedule(t) for t in (0, 4, 5, 9)] == [1.0, 1.0, 0.5, 0.5]


@pytest.mark.parametrize("k", [0.1, 0.5])
@pytest.mark.parametrize("t", [0, 1, 10, 250])
def test_exponential_decay_closed_form(k, t):
    expected = 0.3 * math.exp(-k * t)
    assert schedules.ExponentialDecay(0.3, k=k)(t) == pytest.approx(expected)


def test_exponential_decay_default_k_is_0_1():
    assert schedules.ExponentialDecay(1.0)(10) == pytest.approx(math.exp(-1))


@pytest.mark.parametrize("alpha", [0.0, 0.1])
@pytest.mark.parametrize("t", [0, 3, 5, 10, 14])
def test_cosine_decay_closed_form(alpha, t):
    total = 10
    cosine = 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
    expected = 0.2 * (alpha + (1 - alpha) * cosine)
    schedule = schedules.CosineDecay(0.2, total=total, alpha=alpha)
    assert schedule(t) == pytest.approx(expected)


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.Constant(0.1),
        schedules.StepDecay(0.1, total=10, boundaries=(0.2, 0.7)),
        schedules.StepIncrease(0.01, total=30),
        schedules.ExponentialDecay(0.1, k=0.3),
        schedules.CosineDecay(0.1, total=10, alpha=0.2),
    ],
)
def test_serialisation_round_trip(schedule):
    config = keras.saving.serialize_keras_object(schedule)
    assert config["registered_name"].startswith("keras_sam>")
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    assert [restored(t) for t in range(12)] == [schedule(t) for t in range(12)]


def test_with_total_binds_length_of_training():
    schedule = schedules.StepDecay(1.0)
    with pytest.raises(ValueError, match="needs the length of training"):
        schedule(0)
    assert schedule.with_total(10)(3) == pytest.approx(0.1)
    assert schedule.total is None


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: schedules.Constant(-0.1), "rho=-0.1"),
        (lambda: schedules.Constant(float("nan")), "finite"),
        (lambda: schedules.StepDecay(0.1, total=0), "total=0"),
        (lambda: schedules.StepDecay(0.1, total=2.5), "total=2.5"),
        (lambda: schedules.StepDecay(0.1, boundaries=(0.6, 0.3)), "increas"),
        (lambda: schedules.StepDecay(0.1, boundaries=(0.3, 1.2)), "(0, 1)"),
        (lambda: schedules.StepDecay(0.1, factor=0), "factor=0"),
        (lambda: schedules.ExponentialDecay(0.1, k=-1), "k=-1"),
        (lambda: schedules.CosineDecay(0.1, alpha=2), "alpha=2"),
        (lambda: schedules.by_name("linear", 0.1), "step_decay"),
    ],
)
def test_invalid_arguments_raise_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_negative_step_is_rejected():
    with pytest.raises(ValueError, match="-1"):
        schedules.Constant(0.1)(-1)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("constant", schedules.Constant),
        ("step_decay", schedules.StepDecay),
        ("exp_decay", schedules.ExponentialDecay),
        ("step_increase", schedules.StepIncrease),
        ("cosine", schedules.CosineDecay),
    ],
)
def test_by_name(name, cls):
    schedule = schedules.by_name(name, 0.2)
    assert type(schedule) is cls
    assert schedule.with_total(10)(0) == pytest.approx(0.2)
