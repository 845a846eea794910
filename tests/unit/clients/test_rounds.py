"""A device acts on each closed round once and takes each round's assignment at most once."""

from __future__ import annotations

from clients.rounds import RoundBook, Take
from tests.unit.clients.helpers import assignment, scenario, versions

V = versions(scenario())


def test_a_round_is_closed_once_and_never_goes_back() -> None:
    book = RoundBook()
    assert book.close(0)
    assert not book.close(0)  # the retained RoundClosed again
    assert book.close(3)
    assert not book.close(2)  # an older one, late
    assert book.last_closed == 3


def test_an_assignment_is_taken_at_most_once_per_round() -> None:
    book = RoundBook()
    book.close(0)
    assert book.take(assignment(3, 1, (0, 2), V)) is Take.TRAIN
    assert book.take(assignment(3, 1, (0, 2), V)) is Take.REPEATED  # redelivered
    assert book.take(assignment(3, 1, (1,), V)) is Take.REPEATED  # another one, same round
    assert book.take(assignment(3, 2, (1,), V)) is Take.TRAIN


def test_assignments_of_closed_rounds_are_stale_and_empty_ones_train_nothing() -> None:
    book = RoundBook()
    book.close(4)
    assert book.take(assignment(3, 4, (0,), V)) is Take.STALE
    assert book.take(assignment(3, 5, (), V)) is Take.EMPTY
    assert book.take(assignment(3, 5, (0,), V)) is Take.REPEATED
