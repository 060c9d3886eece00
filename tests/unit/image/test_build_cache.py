"""Cache keys: what changes them and what does not."""

from __future__ import annotations

from services.image.build.cache import State, step_key


def state(env: list[str]) -> State:
    return State({"config": {"Env": env}, "rootfs": {"diff_ids": []}}, [])


def test_same_inputs_same_key() -> None:
    assert step_key(state(["A=1"]), "RUN x", {}) == step_key(state(["A=1"]), "RUN x", {})


def test_each_input_changes_the_key() -> None:
    base = step_key(state(["A=1"]), "RUN x", {"V": "1"}, "h1")
    assert step_key(state(["A=2"]), "RUN x", {"V": "1"}, "h1") != base  # env in effect
    assert step_key(state(["A=1"]), "RUN y", {"V": "1"}, "h1") != base  # instruction
    assert step_key(state(["A=1"]), "RUN x", {"V": "2"}, "h1") != base  # build args
    assert step_key(state(["A=1"]), "RUN x", {"V": "1"}, "h2") != base  # copied content


def test_state_round_trip() -> None:
    s = State({"config": {"Cmd": ["sh"]}}, [{"digest": "sha256:" + "a" * 64, "diffID": "sha256:" + "a" * 64,
                                               "size": 1, "mediaType": "x"}])
    again = State.from_json(s.to_json())
    assert again.digest() == s.digest() and again.chains == ["sha256:" + "a" * 64]
