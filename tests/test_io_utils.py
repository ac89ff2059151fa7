"""dcign_tf.io_utils: the one atomic file writer and the one float-to-uint8 image conversion."""

import json
import os

import numpy as np
import pytest

from dcign_tf import io_utils


def test_to_uint8_rounds_clips_and_passes_uint8_through():
    np.testing.assert_array_equal(io_utils.to_uint8(np.array([-0.1, 0.0, 0.5, 1.0, 1.2])), [0, 0, 128, 255, 255])
    np.testing.assert_array_equal(io_utils.to_uint8(np.float32([[0.2, 0.998]])), [[51, 254]])
    already = np.arange(256, dtype=np.uint8)
    assert io_utils.to_uint8(already) is already


def test_writers_replace_whole_files_and_leave_no_temp_file(tmp_path):
    path = str(tmp_path / "out.json")
    io_utils.write_json_atomic(path, {"b": 1, "a": [1, 2]})
    with open(path) as file:
        text = file.read()
    assert text == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True) + "\n" and json.loads(text)["b"] == 1
    io_utils.write_text_atomic(path, "second\n")
    io_utils.write_bytes_atomic(str(tmp_path / "raw.bin"), b"\x00\xff")
    assert open(path).read() == "second\n" and open(tmp_path / "raw.bin", "rb").read() == b"\x00\xff"
    assert sorted(os.listdir(tmp_path)) == ["out.json", "raw.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp_file(tmp_path):
    path = str(tmp_path / "kept.txt")
    io_utils.write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError, match="killed mid-write"):
        with io_utils.atomic_path(path) as temp_path:
            assert io_utils.TEMP_INFIX in temp_path and os.path.dirname(temp_path) == str(tmp_path)
            with open(temp_path, "w") as file:
                file.write("half")
            raise RuntimeError("killed mid-write")
    assert open(path).read() == "old\n" and os.listdir(tmp_path) == ["kept.txt"]
    with pytest.raises(OSError):
        io_utils.write_bytes_atomic(str(tmp_path / "no_such_dir" / "x"), b"data")
    assert os.listdir(tmp_path) == ["kept.txt"]
