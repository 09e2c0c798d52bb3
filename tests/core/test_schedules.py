"""llm.c's learning-rate schedules (llmc/schedulers.h) against their formulas: warmup lr*(step+1)/u,
then cosine, linear, constant or wsd decay to min = lr*q (r = (step-u)/(N-u); wsd flat until
d = int(0.8 N), then r' = (step-d)/(N-d))."""

import math

import pytest

from llmc.core.errors import LlmcError
from llmc.core.schedules import SCHEDULES, learning_rate

LR, N = 6e-4, 100


def lr_at(kind: str, step: int, warmup: int = 10, q: float = 0.1) -> float:
    return learning_rate(kind, step, LR, warmup, N, q)


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd"])
def test_warmup(kind):
    assert lr_at(kind, 0) == pytest.approx(LR * 1 / 10)
    assert lr_at(kind, 4) == pytest.approx(LR * 5 / 10)
    assert lr_at(kind, 9) == pytest.approx(LR)


def test_cosine():
    mn = LR * 0.1
    assert lr_at("cosine", 10) == pytest.approx(LR)  # decay starts at the full rate
    assert lr_at("cosine", 55) == pytest.approx(mn + 0.5 * (LR - mn))  # halfway: r = 0.5
    r = (73 - 10) / 90
    assert lr_at("cosine", 73) == pytest.approx(mn + 0.5 * (1 + math.cos(math.pi * r)) * (LR - mn))
    assert lr_at("cosine", N) == pytest.approx(mn)


def test_linear():
    mn = LR * 0.1
    assert lr_at("linear", 10) == pytest.approx(LR)
    assert lr_at("linear", 55) == pytest.approx(LR - 0.5 * (LR - mn))
    assert lr_at("linear", 73) == pytest.approx(LR - (73 - 10) / 90 * (LR - mn))
    assert lr_at("linear", N) == pytest.approx(mn)


def test_constant_ignores_warmup_and_decay():
    assert [lr_at("constant", s) for s in (0, 5, 10, 55, N)] == [LR] * 5


def test_wsd():
    mn, d = LR * 0.1, int(0.8 * N)
    assert lr_at("wsd", 10) == LR and lr_at("wsd", 55) == LR and lr_at("wsd", d - 1) == LR  # stable
    assert lr_at("wsd", d) == pytest.approx(LR)  # the decay starts at r' = 0
    assert lr_at("wsd", 90) == pytest.approx(mn + (1 - math.sqrt((90 - d) / (N - d))) * (LR - mn))
    assert lr_at("wsd", N) == pytest.approx(mn)


def test_wsd_decay_point_rounds_down():
    # N = 37: d = int(29.6) = 29
    assert learning_rate("wsd", 28, LR, 0, 37, 0.0) == LR
    assert learning_rate("wsd", 30, LR, 0, 37, 0.0) == pytest.approx((1 - math.sqrt(1 / 8)) * LR)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_default_final_fraction_one_means_no_decay(kind):
    assert [learning_rate(kind, s, LR, 0, N, 1.0) for s in (0, 50, 99, N)] == pytest.approx([LR] * 4)


def test_no_warmup_starts_at_the_full_rate():
    assert learning_rate("cosine", 0, LR, 0, N, 0.0) == pytest.approx(LR)
    assert learning_rate("linear", 50, LR, 0, N, 0.0) == pytest.approx(LR / 2)


def test_schedule_names_are_llmc():
    assert set(SCHEDULES) == {"cosine", "linear", "constant", "wsd"}


@pytest.mark.parametrize("kind", ["cos", "Cosine", "", "exponential"])
def test_unknown_schedule_is_an_error(kind):
    with pytest.raises(LlmcError, match="schedule"):
        learning_rate(kind, 0, LR, 0, N, 0.0)
