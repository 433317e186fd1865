"""`python -m benchmarks.instructions`: how its counts split into a push's parts, and its table."""

import pytest

from benchmarks import instructions
from benchmarks.compare import checkout_names


def test_counts_with_and_without_acks_split_into_the_push_a_send_and_an_ack():
    """Rows without acks give the send (their slope) and the push (their value at no device); the acks the rest."""
    rows = {(10, True): 2_960_000, (10, False): 2_600_000, (100, True): 7_000_000, (100, False): 3_500_000}
    assert instructions.parts(rows) == {"push": 2_500_000, "send": 10_000, "ack": 35_000}
    lines = instructions.table({"base": rows}).splitlines()
    assert "| base | 100 | yes | 7.000 |" in lines
    assert "| base | 2500.0 | 10.0 | 35.0 |" in lines


def test_what_the_rows_do_not_tell_is_left_out():
    """Acks alone split into nothing; one count without acks gives the ack but not the send."""
    assert instructions.parts({(100, True): 7e6}) == {"push": None, "send": None, "ack": None}
    assert instructions.parts({(100, True): 7e6, (100, False): 3.5e6}) == {"push": None, "send": None, "ack": 35_000}
    assert "| only | - | - | - |" in instructions.table({"only": {(100, True): 7e6}})


@pytest.mark.parametrize("argv", [["--devices", "ten"], ["--pushes", "0"], ["--devices", "-1"],
                                  ["--hash-seed", "-1"]])
def test_bad_options_are_refused_before_anything_runs(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        instructions.main(argv)
    assert exit.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_a_checkout_named_twice_keeps_both_runs():
    """Each run of a checkout named twice gets a name of its own, so neither is dropped from the tables."""
    assert checkout_names(["/a/base", "/b/new", "/a/base"]) == ["base (1)", "new", "base (3)"]


def _fake_run(monkeypatch, device_counts):
    import os

    calls = []

    def measure(devices, pushes, acks, gens, workdir, floor=None):
        calls.append((devices, acks, floor, os.environ["PYTHONPATH"].split(os.pathsep)[0]))
        return devices * 1000 + acks, (b"update of %d" % len(calls)) if devices else None

    class Generators:
        def __init__(self, count):
            pass

        def stop(self):
            pass

    monkeypatch.setattr(instructions, "measure", measure)
    monkeypatch.setattr(instructions.harness, "Generators", Generators)
    results = instructions.run(["/a/base", "/b/new"], device_counts, 5, True, "/tmp", framework_floor=True)
    return results, calls


def test_the_framework_floor_is_counted_on_the_same_rows_broadcasting_an_update_of_the_first_checkout(monkeypatch):
    results, calls = _fake_run(monkeypatch, [0, 10])
    assert list(results) == ["base", "new", instructions.FLOOR_NAME]
    assert results[instructions.FLOOR_NAME] == results["base"] == {(0, True): 1, (10, True): 10001, (10, False): 10000}
    # the first update a device of the first checkout received; the floor
    # runs the code of the checkout this process imports
    assert [(floor, path) for _, _, floor, path in calls[-3:]] == [
        (("lean", b"update of 2"), instructions.this_checkout())] * 3
    assert [path for *_, path in calls[:3]] == ["/a/base"] * 3


def test_without_devices_the_floors_update_comes_from_one_push_of_the_first_checkout(monkeypatch):
    results, calls = _fake_run(monkeypatch, [0])
    assert calls[1] == (1, False, None, "/a/base")  # the extra push, after the first checkout's row
    assert calls[-1][2] == ("lean", b"update of 2")
