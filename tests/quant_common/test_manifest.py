"""build.json's hashes: every matching file, hashed several at once, equal to hashlib's one-by-one digest."""

from __future__ import annotations

import hashlib

from quant_common.manifest import tree_hashes


def test_tree_hashes_match_hashlib_and_skip_other_files(tmp_path):
    (tmp_path / "sub").mkdir()
    blobs = {"a.json": b"{}", "sub/b.safetensors": bytes(range(256)) * 5000, "sub/c.safetensors": b"x" * 3,
             "big.safetensors": b"y" * 100, "notes.txt": b"skip me"}
    for name, data in blobs.items():
        (tmp_path / name).write_bytes(data)
    hashes = tree_hashes(tmp_path, suffixes={".json", ".safetensors"}, max_bytes=99)
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()
                if not name.endswith(".txt") and len(data) < 99}
    assert hashes == expected
    assert tree_hashes(tmp_path / "sub", suffixes={".pth"}) == {}
