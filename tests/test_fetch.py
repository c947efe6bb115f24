"""The checksummed cache: sources in order, corrupted files fetched again, clear errors."""

import pytest

from lesson5.data.fetch import MANIFEST, Source, fetch, file_hash
from lesson5.errors import DataError


def writer(calls, content=b"hello\n"):
    def fill(folder):
        calls.append(folder)
        (folder / "a.txt").write_bytes(content)
    return fill


def broken(folder):
    raise ConnectionError("no route to host")


def test_first_working_source_fills_the_cache_once(tmp_path):
    calls = []
    sources = [Source("offline", broken), Source("ok", writer(calls))]
    folder = fetch("ds", ["a.txt"], sources, cache_dir=str(tmp_path))
    assert (folder / "a.txt").read_bytes() == b"hello\n" and (folder / MANIFEST).exists()
    fetch("ds", ["a.txt"], sources, cache_dir=str(tmp_path))
    assert len(calls) == 1  # served from the cache the second time


def test_corrupted_cache_file_is_caught_and_fetched_again(tmp_path):
    calls = []
    sources = [Source("ok", writer(calls))]
    folder = fetch("ds", ["a.txt"], sources, cache_dir=str(tmp_path))
    (folder / "a.txt").write_bytes(b"hellO\n")
    folder = fetch("ds", ["a.txt"], sources, cache_dir=str(tmp_path))
    assert len(calls) == 2 and (folder / "a.txt").read_bytes() == b"hello\n"


def test_known_hash_rejects_a_wrong_file_and_tries_the_next_source(tmp_path):
    good, bad = [], []
    sources = [Source("bad", writer(bad, b"other\n")), Source("good", writer(good))]
    want = {"a.txt": "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"}  # sha256 of b"hello\n"
    folder = fetch("ds", ["a.txt"], sources, cache_dir=str(tmp_path), known=want)
    assert len(bad) == 1 and len(good) == 1 and file_hash(folder / "a.txt") == want["a.txt"]


def test_no_source_lists_what_was_tried_and_how_to_work_offline(tmp_path):
    with pytest.raises(DataError) as err:
        fetch("ds", ["a.txt"], [Source("mirror A", broken), Source("mirror B", broken)],
              cache_dir=str(tmp_path), offline_hint="Put a.txt in data.path.")
    msg = str(err.value)
    assert "mirror A: ConnectionError: no route to host" in msg and "mirror B" in msg
    assert "Put a.txt in data.path." in msg
    assert not (tmp_path / "ds").exists()  # nothing half-written


@pytest.mark.parametrize("damage", [b"{not json", b"[1, 2]", None], ids=["garbled", "not a mapping", "missing"])
def test_a_damaged_or_missing_manifest_is_rebuilt_by_fetching_again(tmp_path, damage):
    calls = []
    sources = [Source("ok", writer(calls))]
    folder = fetch("ds", ["a.txt"], sources, cache_dir=str(tmp_path))
    if damage is None:
        (folder / MANIFEST).unlink()
    else:
        (folder / MANIFEST).write_bytes(damage)
    folder = fetch("ds", ["a.txt"], sources, cache_dir=str(tmp_path))
    assert len(calls) == 2 and (folder / MANIFEST).read_text().startswith("{")


def test_a_cache_that_cannot_be_written_is_named_with_the_fix(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError) as err:
        fetch("ds", ["a.txt"], [Source("ok", writer([]))], cache_dir=str(blocker / "cache"))
    assert str(blocker / "cache") in str(err.value) and "LESSON5_CACHE" in str(err.value)
