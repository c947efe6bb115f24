"""The spool's format proves a spool whole: a cut at any byte, or a garbled record, is named where it is."""

import pytest

from lesson5.tracking.messages import EndRun, LogMetrics
from lesson5.tracking.spool import HEAD, MAGIC, Incomplete, InUse, Known, Spool, locked, pending, read

MESSAGES = [Known(1, "abc"), LogMetrics(1, 1000, [("loss", 0.5, 1)]), LogMetrics(1, 2000, [("loss", 0.25, 2)]),
            EndRun(1, "FINISHED")]


def _spool(root):
    spool = Spool(root, "sqlite:///nowhere.db")
    for msg in MESSAGES:
        spool.add(msg)
    spool.close()
    return spool.dir


def _starts(data: bytes) -> list[int]:
    """Where each record starts, and the end of the file."""
    starts = [len(MAGIC)]
    while starts[-1] < len(data):
        starts.append(starts[-1] + HEAD.size + HEAD.unpack_from(data, starts[-1])[0])
    return starts


def _read_all(folder) -> tuple[list, Incomplete | None]:
    got = []
    try:
        for msg in read(folder):
            got.append(msg)
    except Incomplete as e:
        return got, e
    return got, None


def test_a_closed_spool_reads_whole_and_is_pending(tmp_path):
    folder = _spool(tmp_path)
    assert _read_all(folder) == (MESSAGES, None)
    assert pending(tmp_path) == [folder]


def test_a_spool_cut_at_any_byte_reads_up_to_the_cut_and_names_it(tmp_path):
    folder = _spool(tmp_path)
    file = folder / "messages.pkl"
    data = file.read_bytes()
    starts = _starts(data)
    for at in range(len(data)):
        file.write_bytes(data[:at])
        got, cut = _read_all(folder)
        assert cut is not None, at
        whole = sum(1 for s in starts[1:] if s <= at)  # records wholly before the cut
        assert got == MESSAGES[:min(whole, len(MESSAGES))], at
        if at < len(MAGIC):
            assert (cut.record, cut.offset) == (1, 0) and "not a lesson5 spool" in str(cut)
            continue
        assert (cut.record, cut.offset) == (whole + 1, starts[whole]), at
        assert f"{file} " in str(cut) and f"at record {whole + 1} (byte {starts[whole]})" in str(cut)
        assert ("ends" if at == starts[whole] else "is cut") in str(cut), (at, str(cut))


def test_a_garbled_record_or_bytes_after_the_end_are_named(tmp_path):
    folder = _spool(tmp_path)
    file = folder / "messages.pkl"
    data = file.read_bytes()
    starts = _starts(data)
    garbled = bytearray(data)
    garbled[starts[2] + HEAD.size + 3] ^= 0xFF  # a byte inside record 3's pickle
    file.write_bytes(bytes(garbled))
    got, cut = _read_all(folder)
    assert got == MESSAGES[:2] and (cut.record, cut.offset) == (3, starts[2])
    assert "is garbled" in str(cut) and "checksum" in str(cut)
    file.write_bytes(data + b"more")
    got, cut = _read_all(folder)
    assert got == MESSAGES and (cut.record, cut.offset) == (len(starts), len(data))
    assert "4 byte(s) follow its End" in str(cut)


def test_a_spool_being_written_is_in_use_until_closed(tmp_path):
    spool = Spool(tmp_path, "sqlite:///nowhere.db")
    spool.add(MESSAGES[0])
    with pytest.raises(InUse, match="still writing it"):
        with locked(spool.dir):
            pass
    spool.close()
    with locked(spool.dir):
        with pytest.raises(InUse):  # and a second sync waits for the first
            with locked(spool.dir):
                pass
