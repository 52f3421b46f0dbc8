"""Arrays of an .npz saved with np.savez_compressed, inflated a run of rows at a time (in
Fortran order, once into a temporary file that is mapped).

The streamed reader is checked against the whole reader (np.load inflating each member whole):
the summary, the messages, the exit code and the --output bytes, with chunks of a few rows so
that small arrays span many reads. Damaged archives are built here byte by byte.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np
import pytest

from test_parquet_sides import _both_readers, _eval
from xent_cli import stream

N, K = 40, 3


@pytest.fixture
def small_chunks(monkeypatch):
    """Makes the array readers take a few rows at a time, and records each run of rows a
    compressed member gives, (member, rows), and each member spilled, (member, 'spilled')."""
    monkeypatch.setattr(stream, "CHUNK_ROWS", 11)
    monkeypatch.setattr(stream, "PARQUET_ROWS", 9)
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 64)
    runs = []
    read = stream._Deflated.read

    def recorded(self, start, count):
        rows = read(self, start, count)
        runs.append((self.member, len(rows)))
        return rows

    spilled = stream._Deflated.spilled

    def recorded_spill(self):
        runs.append((self.member, "spilled"))
        return spilled(self)

    monkeypatch.setattr(stream._Deflated, "read", recorded)
    monkeypatch.setattr(stream._Deflated, "spilled", recorded_spill)
    return runs


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(11)
    z = rng.normal(scale=3, size=(N, K)).round(5)
    y = rng.integers(0, K, size=N)
    t = rng.dirichlet(np.ones(K), size=N).round(6)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    np.savez_compressed(tmp_path / "yc.npz", labels=y)
    np.savez_compressed(tmp_path / "tc.npz", targets=t)
    np.save(tmp_path / "t.npy", t)
    return z, y, t


LAYOUTS = {"float64": lambda z: z, "float32": lambda z: z.astype(np.float32),
           "float16": lambda z: z.astype(np.float16), "int16": lambda z: (z * 9).astype(np.int16),
           "big-endian": lambda z: z.astype(">f8"), "Fortran": np.asfortranarray,
           "Fortran float32": lambda z: np.asfortranarray(z, dtype=np.float32)}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("inputs, options", [
    ("own labels", ()),
    ("own labels", ("--reduction", "sum")),
    ("own labels", ("--weight", "1,2,0.5")),  # the mean's divisor read from the labels first
    ("own labels", ("--ignore-index", "1")),  # a sample ignored: the rows start over
    ("own targets", ()),
    ("own targets", ("--loss", "bce")),
    ("--labels y.npy", ()),
    ("--labels yc.npz", ()),
    ("--targets tc.npz", ()),
    ("--targets t.npy", ("--loss", "bce")),
])
def test_compressed_logits_give_the_whole_reader_s_bytes(runner, tmp_path, arrays, small_chunks,
                                                         monkeypatch, layout, inputs, options):
    z, y, t = arrays
    z = LAYOUTS[layout](z)
    if inputs.startswith("own"):
        held = {"labels": y} if inputs == "own labels" else {"targets": t}
        np.savez_compressed(tmp_path / "zc.npz", logits=z, **held)
        side = []
    else:
        np.savez_compressed(tmp_path / "zc.npz", logits=z)
        option, name = inputs.split()
        side = [option, str(tmp_path / name)]
    sliced, whole, read_whole = _both_readers(
        runner, tmp_path, monkeypatch, [str(tmp_path / "zc.npz"), *side, *options])
    assert sliced[0] == 0, sliced[2]
    assert sliced == whole and not read_whole
    logits_runs = [rows for member, rows in small_chunks if member == "logits.npy"]
    if layout.startswith("Fortran"):  # inflated once into a file of its own, read through a map
        assert logits_runs.count("spilled") >= 1 and set(logits_runs) == {"spilled"}
    else:  # 11 rows at a time, N a pass (a pass stopped at an ignored sample starts over)
        assert max(logits_runs) == 11 and sum(logits_runs) >= N


@pytest.mark.parametrize("side", ["--labels yc.npz", "--targets tc.npz", "--labels zyc.npz"])
def test_compressed_labels_or_targets_beside_npy_logits_give_the_whole_reader_s_bytes(
        runner, tmp_path, arrays, small_chunks, monkeypatch, side):
    z, y, _ = arrays
    np.savez_compressed(tmp_path / "zyc.npz", logits=z, labels=y)  # labels beside other arrays
    option, name = side.split()
    sliced, whole, read_whole = _both_readers(
        runner, tmp_path, monkeypatch, [str(tmp_path / "z.npy"), option, str(tmp_path / name)])
    assert sliced[0] == 0, sliced[2]
    assert sliced == whole and not read_whole
    if option == "--targets":  # targets as large as the logits come a run at a time
        assert {rows for member, rows in small_chunks} == {11, N - 33}
    else:  # labels are inflated whole, and only they
        assert small_chunks == [("labels.npy", N)]


@pytest.mark.parametrize("held, side", [
    ({"labels": "y", "ids": "ids"}, ()),  # an array of another name is left unread
    ({"targets": "t", "ids": "ids"}, ()),
    ({"labels": "y", "targets": "t"}, ()),  # both kinds: the labels, as the whole reader takes
    ({"ids": "ids"}, ("--labels", "y.npy")),
    ({"ids": "ids"}, ("--targets", "tc.npz")),
])
def test_arrays_beside_the_logits_are_taken_as_the_whole_reader_takes_them(
        runner, tmp_path, arrays, small_chunks, monkeypatch, held, side):
    z, y, t = arrays
    named = {"y": y, "t": t, "ids": np.arange(N) * 7}
    np.savez_compressed(tmp_path / "zc.npz", logits=z, **{name: named[v] for name, v in held.items()})
    arguments = [str(tmp_path / "zc.npz"), *(side and (side[0], str(tmp_path / side[1])))]
    sliced, whole, read_whole = _both_readers(runner, tmp_path, monkeypatch, arguments)
    assert sliced[0] == 0, sliced[2]
    assert sliced == whole and not read_whole
    assert "ids.npy" not in {member for member, _ in small_chunks}


@pytest.mark.parametrize("held", ["labels", "targets"])
@pytest.mark.parametrize("side", ["--labels y.npy", "--targets tc.npz"])
def test_targets_held_and_given_again_are_refused_before_anything_is_inflated(
        runner, tmp_path, arrays, small_chunks, monkeypatch, held, side):
    z, y, t = arrays
    np.savez_compressed(tmp_path / "zc.npz", logits=z, **{held: y if held == "labels" else t})
    option, name = side.split()
    arguments = [str(tmp_path / "zc.npz"), option, str(tmp_path / name)]
    whole_reads = []
    read_input = stream.read_input
    with monkeypatch.context() as patched:
        patched.setattr(stream, "read_input",
                        lambda *args, **kwargs: whole_reads.append(1) or read_input(*args, **kwargs))
        told = _eval(runner, tmp_path, arguments)
    assert not whole_reads and small_chunks == []  # the whole reader inflates both arrays first
    sliced, whole, _ = _both_readers(runner, tmp_path, monkeypatch, arguments)
    assert told == sliced == whole and sliced[0] == 2
    assert sliced[2] == (f"Error: {tmp_path / 'zc.npz'}: has an array {held!r} and {option[2:]} "
                         f"come from {tmp_path / name}; remove one of them\n")


@pytest.mark.parametrize("labels", ["int8", "uint16", "uint64", "float whole", "float 2.5",
                                    "(N, 1)", "out of range", "object"])
def test_compressed_labels_of_any_dtype_are_judged_as_the_whole_reader_judges_them(
        runner, tmp_path, arrays, small_chunks, monkeypatch, labels):
    z, y, _ = arrays
    held = {"int8": y.astype(np.int8), "uint16": y.astype(np.uint16),
            "uint64": y.astype(np.uint64), "float whole": y.astype(np.float64),
            "float 2.5": np.where(np.arange(N) == 17, 2.5, y), "(N, 1)": y[:, None],
            "out of range": np.where(np.arange(N) == 23, 7, y),
            "object": y.astype(object)}[labels]
    np.savez_compressed(tmp_path / "zc.npz", logits=z, labels=held)
    sliced, whole, _ = _both_readers(runner, tmp_path, monkeypatch, [str(tmp_path / "zc.npz")])
    assert sliced == whole
    assert (sliced[0] == 0) == (labels in ("int8", "uint16", "uint64", "float whole")), sliced[2]


@pytest.mark.parametrize("labels", ["none", "one more", "(N, 2)"])
def test_compressed_labels_of_another_count_or_shape_are_told_as_the_whole_reader_tells_them(
        runner, tmp_path, arrays, small_chunks, monkeypatch, labels):
    y = arrays[1]
    y = {"none": y[:0], "one more": np.append(y, 1), "(N, 2)": np.stack([y, y], axis=1)}[labels]
    np.savez_compressed(tmp_path / "yc.npz", labels=y)
    sliced, whole, _ = _both_readers(runner, tmp_path, monkeypatch, [
        str(tmp_path / "z.npy"), "--labels", str(tmp_path / "yc.npz")])
    assert sliced == whole and sliced[0] == 2
    assert "yc.npz: " in sliced[2] and "readable" not in sliced[2]


@pytest.mark.parametrize("logits", ["object", "3-d", "one class", "no rows"])
def test_compressed_logits_the_stream_does_not_take_are_the_whole_reader_s(
        runner, tmp_path, arrays, small_chunks, monkeypatch, logits):
    z, y, _ = arrays
    z = {"object": z.astype(object),
         "3-d": z.reshape(N, 1, K), "one class": z[:, :1], "no rows": z[:0]}[logits]
    np.savez_compressed(tmp_path / "zc.npz", logits=z)
    sliced, whole, _ = _both_readers(
        runner, tmp_path, monkeypatch, [str(tmp_path / "zc.npz"), "--labels", str(tmp_path / "y.npy")])
    assert sliced == whole and sliced[0] == 2


def _member_entry(raw: bytes, name: bytes) -> int:
    """Returns where the central directory's entry of a member begins."""
    at = raw.find(b"PK\x01\x02")
    while raw[at + 46:at + 46 + len(name)] != name:
        at = raw.find(b"PK\x01\x02", at + 1)
    return at


def _damaged(path, how: str) -> None:
    """Damages the member logits.npy of the archive at path in place."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("logits.npy")
    entry = _member_entry(raw, b"logits.npy")
    if how == "bad CRC-32":  # the bytes inflate as they were written, to another checksum
        raw[entry + 16:entry + 20] = struct.pack("<I", member.CRC ^ 1)
    elif how == "a byte flipped late":  # inflates to other bytes, or stops inflating
        name_length, extra_length = struct.unpack("<HH", raw[member.header_offset + 26:][:4])
        data = member.header_offset + 30 + name_length + extra_length
        raw[data + member.compress_size * 3 // 4] ^= 0x10
    elif how == "deflate stream cut short":  # zipfile reads the first half of the stream only
        raw[entry + 20:entry + 24] = struct.pack("<I", member.compress_size // 2)
    path.write_bytes(bytes(raw))


def _with_header(path, z: np.ndarray, claimed: tuple[int, int], y: np.ndarray) -> None:
    """Writes an archive whose logits.npy holds z under a header that claims another shape."""
    npy = io.BytesIO()
    np.save(npy, z)
    raw = npy.getvalue().replace(repr(z.shape).encode(), repr(claimed).encode(), 1)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("logits.npy", raw)
        labels = io.BytesIO()
        np.save(labels, y)
        archive.writestr("labels.npy", labels.getvalue())


@pytest.mark.parametrize("how", ["bad CRC-32", "a byte flipped late", "deflate stream cut short",
                                 "a header claiming more rows", "a header claiming fewer rows"])
@pytest.mark.parametrize("options", [(), ("--reduction", "sum"), ("--weight", "1,2,3")])
@pytest.mark.parametrize("order", ["C", "F"])
def test_a_damaged_compressed_archive_fails_as_the_whole_reader_fails_and_writes_nothing(
        runner, tmp_path, arrays, small_chunks, monkeypatch, how, options, order):
    z, y, _ = arrays
    z = np.tile(z, (50, 1))  # 2,000 rows: the damage lies past the first runs
    z = np.asfortranarray(z) if order == "F" else z
    y = np.tile(y, 50)
    path = tmp_path / "bad.npz"
    if how.startswith("a header"):
        rows = len(z) + 3 if "more" in how else len(z) - 3
        _with_header(path, z, (rows, K), y)
    else:
        np.savez_compressed(path, logits=z, labels=y)
        _damaged(path, how)
    sliced, whole, _ = _both_readers(runner, tmp_path, monkeypatch, [str(path), *options])
    assert sliced == whole
    code, stdout, stderr, output = sliced
    assert code == 2 and stdout == "" and output is None
    assert stderr.startswith(f"Error: {path}") and stderr.count("\n") == 1, stderr
    if how == "bad CRC-32":  # found only as the last bytes are inflated, after most rows
        assert stderr == f"Error: {path}: is not a readable .npz archive: Bad CRC-32 for file 'logits.npy'\n"
        assert order == "F" or sum(rows for member, rows in small_chunks
                                   if member == "logits.npy") > len(z) // 2


def test_a_pass_abandoned_part_way_starts_the_next_from_a_stream_of_its_own(tmp_path, arrays,
                                                                            monkeypatch):
    z, y, _ = arrays
    np.savez_compressed(tmp_path / "zc.npz", logits=z, labels=y)
    logits = stream._load_npz(str(tmp_path / "zc.npz"), streamed=True)["logits"]
    assert isinstance(logits, stream._Deflated) and logits.shape == (N, K)
    first = stream._rows(logits, 0, 7)
    assert np.array_equal(stream._rows(logits, 7, 7), z[7:14])
    assert np.array_equal(stream._rows(logits, 0, 7), first)  # again from the start
    assert np.array_equal(stream._rows(logits, 21, 30), z[21:])  # skipped ahead to row 21
    assert logits._runs is None  # closed at the last row
    assert np.array_equal(np.asarray(logits), z)


def test_eval_json_of_a_compressed_archive_is_that_of_the_same_arrays_stored(runner, tmp_path,
                                                                             arrays, small_chunks):
    z, y, _ = arrays
    np.savez(tmp_path / "stored.npz", logits=z, labels=y)
    np.savez_compressed(tmp_path / "zc.npz", logits=z, labels=y)
    stored = _eval(runner, tmp_path, [str(tmp_path / "stored.npz")], "stored.npy")
    packed = _eval(runner, tmp_path, [str(tmp_path / "zc.npz")], "packed.npy")
    assert stored[0] == 0, stored[2]
    assert stored[3] == packed[3]
    assert ({**json.loads(stored[1]), "source": None} == {**json.loads(packed[1]), "source": None})


def test_a_fortran_ordered_member_is_spilled_once_and_no_room_for_it_is_one_line(
        runner, tmp_path, arrays, small_chunks, monkeypatch):
    import errno
    import shutil

    z, y, _ = arrays
    np.savez_compressed(tmp_path / "zf.npz", logits=np.asfortranarray(z), labels=y)
    logits = stream._load_npz(str(tmp_path / "zf.npz"), streamed=True)["logits"]
    assert logits.fortran and np.array_equal(np.asarray(logits), z)
    assert np.array_equal(stream._rows(logits, 11, 11), z[11:22])
    assert logits.spilled() is logits.spilled()  # inflated once, whatever the passes

    def no_room(source, target, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", no_room)
    code, stdout, stderr, output = _eval(runner, tmp_path, [str(tmp_path / "zf.npz")])
    assert code == 2 and output is None
    assert stderr == (f"Error: {tmp_path / 'zf.npz'}: cannot be copied to a temporary file in "
                      f"{stream.tempfile.gettempdir()}: No space left on device; set TMPDIR to a "
                      "directory with room for it\n")


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_pass_stopped_by_an_error_leaves_no_thread_inflating_behind(tmp_path, arrays,
                                                                      monkeypatch):
    import threading
    import time

    from xent_cli.errors import InputError

    z, y, _ = arrays
    y = np.where(np.arange(N) == 30, 7, y)  # told in the third chunk, the stream not at its end
    np.savez_compressed(tmp_path / "zc.npz", logits=z, labels=y)
    monkeypatch.setattr(stream, "CHUNK_ROWS", 11)
    before = threading.active_count()
    for _ in range(3):
        with pytest.raises(InputError, match="row 30, column 'labels': label 7"):
            stream.evaluate(stream.open_source(str(tmp_path / "zc.npz")), show=0)
    deadline = time.monotonic() + 5  # ended as the source went, with no garbage collection
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
