"""Instrument ids and slots of a request."""

from __future__ import annotations

import pytest

from serve.instruments import instrument_id
from serve.shards import request_slots


def test_ids_depend_on_request_seed_and_model_only():
    request = {"prompt": "p", "keys": {"low": 21, "high": 108}}
    first = instrument_id(request, 1, "m")
    assert first == instrument_id(dict(reversed(list(request.items()))), 1, "m") and len(first) == 32
    assert len({first, instrument_id(request, 2, "m"), instrument_id(request, 1, "n")}) == 3


@pytest.mark.parametrize("keys, velocities, count", [((21, 108), [25, 50, 75, 100, 127], 440), ((60, 60), [127], 1)])
def test_request_slots_follow_the_instrument_grid(keys, velocities, count):
    slots = request_slots({"keys": {"low": keys[0], "high": keys[1]}, "velocities": velocities})
    assert len(slots) == count and slots == sorted(slots)
