"""Atomic outputs: the permissions an ordinary open() gives, no temporary file left on failure; one JSON reader."""

import os
import stat

import pytest

from vqnqs.io import InputError, atomic_open, read_json, write_json


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_permissions_of_open(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "atomic.json", {"a": 1})
        with open(tmp_path / "plain.json", "w") as handle:
            handle.write("{}")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "atomic.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_json(tmp_path / "out.json", {"old": True})
    with pytest.raises(RuntimeError), atomic_open(tmp_path / "out.json") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert read_json(tmp_path / "out.json") == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


BAD_JSON = [(None, "file not found"), ("{", "cannot read a JSON record"), ("[1]", "expected a JSON object")]


@pytest.mark.parametrize("content, message", BAD_JSON)
def test_read_json_names_the_file(tmp_path, content, message):
    path = tmp_path / "record.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=f"record.json: {message}"):
        read_json(path)
