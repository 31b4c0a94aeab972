"""``StopText``: a stream never shows the start of a stop string it then takes back."""

from lit_gpt_scratch.serve.stop_text import StopText


def test_text_that_could_become_a_stop_is_held_back_then_released_or_cut():
    stops = StopText(["END"])
    assert stops.feed("abc E") == "abc "  # "E" could begin END
    assert stops.feed("N") == ""
    assert stops.feed("x") == "ENx"  # it did not: shown after all
    assert stops.feed("yE") == "y"
    assert stops.feed("ND more") == "" and stops.stopped
    assert StopText(["END"]).feed("no stop E") == "no stop "


def test_the_earliest_of_several_stops_ends_the_text_and_a_tail_is_flushed():
    stops = StopText(["\n\n", "###"])
    assert stops.feed("one ### two\n\n") == "one " and stops.stopped
    tail = StopText(["###"])
    assert tail.feed("ends with #") == "ends with " and tail.flush() == "#"
    assert StopText([]).feed("anything") == "anything"
