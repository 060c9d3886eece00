"""Docker-shaped formatting in the CLI."""

import pytest

from cli import output


@pytest.mark.parametrize(("size", "text"), [(0, "0B"), (999, "999B"), (2_090_000, "2.09MB"),
                                            (1_234_567_890, "1.23GB"), (856_000, "856kB")])
def test_human_size(size, text):
    assert output.human_size(size) == text


@pytest.mark.parametrize(("secs", "text"), [(0.2, "Less than a second"), (1, "1 second"), (5, "5 seconds"),
                                            (70, "About a minute"), (600, "10 minutes"), (3600, "About an hour"),
                                            (7200, "2 hours"), (3 * 86400, "3 days")])
def test_human_duration(secs, text):
    assert output.human_duration(secs) == text


@pytest.mark.parametrize(("text", "size"), [("32m", 32 << 20), ("1g", 1 << 30), ("512k", 512 << 10),
                                            ("100", 100), ("64MB", 64 << 20)])
def test_parse_size(text, size):
    assert output.parse_size(text) == size


def test_parse_size_rejects_garbage():
    with pytest.raises(ValueError):
        output.parse_size("lots")


def test_render_format():
    value = {"State": {"OOMKilled": True, "Pid": 7}, "Name": "/web", "Args": ["a", "b"]}
    assert output.render_format("{{.State.OOMKilled}} {{.State.Pid}} {{.Name}}", value) == "true 7 /web"
    assert output.render_format("{{json .Args}}", value) == '["a", "b"]'
    with pytest.raises(ValueError):
        output.render_format("{{.Nope}}", value)


def test_rfc3339():
    assert output.rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert output.rfc3339(0) == "0001-01-01T00:00:00Z"


def test_table_pads_columns(capsys):
    output.table(["A", "LONGER"], [["x", "1"], ["yyyy", "2"]])
    assert capsys.readouterr().out == "A      LONGER\nx      1\nyyyy   2\n"
