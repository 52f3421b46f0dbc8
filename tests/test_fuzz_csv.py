"""Fuzzing the CSV readers (issue 6): random bytes and near-valid files through `xent eval`.

Whatever the bytes, eval either computes (exit 0) or refuses in one stderr line that names the
file (exit 2): never a traceback, never a hang. Both readers run every example: the strict one, and
the fast block reader (forced on small files, with tiny blocks) that must hand anything unusual
over to the strict one. The example counts keep the file at seconds; longer campaigns (1,500
examples per test, run while writing it) found nothing more.
"""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xent_cli import stream
from xent_cli.cli import app

VALID = "z0,z1,z2,label\n1.5,-2,0.25,0\n3,4e-3,-1,2\n0,0,0,1\n-7.5,2,1e2,1\n"
TARGETS = "p0,p1,p2\n0.5,0.5,0\n0,0,1\n0.2,0.3,0.5\n1,0,0\n"
LOGITS_ONLY = "z0,z1,z2\n1.5,-2,0.25\n3,4e-3,-1\n0,0,0\n-7.5,2,1e2\n"

# What near-valid files get wrong: each a piece of text put somewhere in a valid file.
NOISE = ["", ",", ",,", ";", "\t", '"', '""', "'", "\x00", "\r", "\n", "\r\n", " ", "\ufeff",
         "1e400", "-1e400", "1e308", "9" * 400, "1_000", "0x1f", "nan", "-inf", "inf", "١", "１",
         "٣.٥", "2.0", "-100", "1e-400", "+", "-", ".", "e5", "\u00a0", "\u2212" "1", "é", "\\",
         "label", "z0", "#"]


@pytest.fixture(params=["strict", "fast", "cut"])
def reader(request, monkeypatch):
    """Runs each example through one reader: the fast one forced, with blocks of a few lines,
    parsed by Polars' CSV reader or cut into cells and cast (as a file of many columns is)."""
    if request.param in ("fast", "cut"):
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
        monkeypatch.setattr(stream, "BLOCK_BYTES", 32)
        monkeypatch.setattr(stream, "WIDE_CSV_COLUMNS", 0 if request.param == "cut" else 1 << 30)
    else:
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", 1 << 60)
    return request.param


def run_eval(runner, tmp_path, files: dict, arguments: list[str]):
    """Runs eval on the files; asserts exit 0, or exit 2 with one line naming a file."""
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    out = tmp_path / "out.csv"
    out.unlink(missing_ok=True)  # left by an earlier example
    started = time.perf_counter()
    result = runner.invoke(app, ["eval", *arguments, "--format", "json", "--output", str(out)])
    elapsed = time.perf_counter() - started
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{files!r}: {result.exception!r}"
    assert "Traceback" not in result.output
    assert elapsed < 5, f"{files!r} took {elapsed:.1f} s"
    if result.exit_code == 0:
        assert result.stdout.startswith("{") and out.exists()
        return result
    assert result.exit_code == 2, (files, result.output)
    assert result.stdout == "" and not out.exists(), files
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, (files, result.stderr)
    assert any(f"{tmp_path / name}" in result.stderr for name in files), (files, result.stderr)
    return result


@st.composite
def mutated(draw, text: str = VALID) -> bytes:
    """Returns a valid file with a few pieces cut out, repeated or inserted."""
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace-cell", "duplicate-line"]))
        if action == "insert":
            text = text[:at] + draw(st.sampled_from(NOISE)) + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 8)):]
        elif action == "replace-cell":
            cells = text.split(",")
            c = draw(st.integers(0, len(cells) - 1))
            end = "\n" if cells[c].endswith("\n") else ""
            cells[c] = draw(st.sampled_from(NOISE)) + end
            text = ",".join(cells)
        elif text:
            lines = text.splitlines(keepends=True)
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            text = "".join(lines)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace")


FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(raw=st.binary(max_size=300))
def test_random_bytes_are_read_or_refused_in_one_line(runner, tmp_path, reader, raw):
    run_eval(runner, tmp_path, {"z.csv": raw}, [str(tmp_path / "z.csv")])


@FUZZ
@given(pieces=st.lists(st.sampled_from(list("0123456789,.-+e\n\r\"; ") + ["label", "z0", "nan"]),
                      max_size=60))
def test_random_csv_like_text_is_read_or_refused_in_one_line(runner, tmp_path, reader, pieces):
    body = "z0,z1,label\n" + "".join(pieces)
    run_eval(runner, tmp_path, {"z.csv": body.encode()}, [str(tmp_path / "z.csv")])


@FUZZ
@given(raw=mutated())
def test_near_valid_logits_are_read_or_refused_in_one_line(runner, tmp_path, reader, raw):
    run_eval(runner, tmp_path, {"z.csv": raw}, [str(tmp_path / "z.csv")])


@FUZZ
@given(raw=mutated(TARGETS))
def test_near_valid_soft_targets_are_read_or_refused_in_one_line(runner, tmp_path, reader, raw):
    run_eval(runner, tmp_path, {"z.csv": LOGITS_ONLY.encode(), "t.csv": raw},
             [str(tmp_path / "z.csv"), "--targets", str(tmp_path / "t.csv")])


@FUZZ
@given(raw=mutated("label\n0\n2\n1\n1\n"))
def test_near_valid_labels_files_are_read_or_refused_in_one_line(runner, tmp_path, reader, raw):
    run_eval(runner, tmp_path, {"z.csv": LOGITS_ONLY.encode(), "y.csv": raw},
             [str(tmp_path / "z.csv"), "--labels", str(tmp_path / "y.csv")])


@pytest.mark.parametrize("cell", ["1e400", "١", "\ufeff1", "1\x00", "9" * 400, "0x1f", "\u2212" "1", '"1',
                                  '"1\n"'])
def test_both_readers_refuse_the_same_cells_with_the_same_line(runner, tmp_path, monkeypatch, cell):
    errors = set()
    for threshold, wide in ((1 << 60, 1 << 30), (0, 1 << 30), (0, 0)):  # strict, fast, fast cut
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        monkeypatch.setattr(stream, "BLOCK_BYTES", 32)
        monkeypatch.setattr(stream, "WIDE_CSV_COLUMNS", wide)
        body = VALID.replace("3,4e-3", f"3,{cell}").encode()
        errors.add(run_eval(runner, tmp_path, {"z.csv": body}, [str(tmp_path / "z.csv")]).stderr)
    assert len(errors) == 1 and "Error: " in errors.pop()


def test_a_huge_number_of_digits_is_read_not_hung_on(runner, tmp_path, reader):
    body = f"z0,z1,label\n0.{'1' * 100_000},2,0\n".encode()
    result = run_eval(runner, tmp_path, {"z.csv": body}, [str(tmp_path / "z.csv")])
    assert result.exit_code == 0


# --- the binary formats: a corrupt file is bad input too -----------------------------------------

def _binary_files(directory) -> dict[str, bytes]:
    import numpy as np

    z, y = np.arange(12, dtype=np.float64).reshape(4, 3), np.array([0, 2, 1, 1])
    np.save(directory / "z.npy", z)
    np.savez(directory / "z.npz", logits=z, labels=y)
    np.savez_compressed(directory / "c.npz", logits=z, labels=y)
    files = {name: (directory / name).read_bytes() for name in ("z.npy", "z.npz", "c.npz")}
    try:
        import polars as pl

        pl.DataFrame({"a": z[:, 0], "b": z[:, 1], "label": y}).write_parquet(directory / "z.parquet")
        files["z.parquet"] = (directory / "z.parquet").read_bytes()
    except ImportError:
        pass
    return files


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupt_npy_npz_and_parquet_files_are_refused_in_one_line(runner, tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("binary")
    files = _binary_files(directory)
    name = data.draw(st.sampled_from(sorted(files)))
    raw = bytearray(files[name])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "zero"]))
        if action == "flip":
            raw[at] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del raw[at:]
            if not raw:
                break
        else:
            raw[at:at + 16] = bytes(len(raw[at:at + 16]))
    arguments = [str(directory / name)] + (["--labels", str(directory / "y.csv")] if name.endswith(".npy") else [])
    files = {name: bytes(raw), "y.csv": b"0\n2\n1\n1\n"}
    run_eval(runner, directory, files, arguments)


def test_an_npz_member_numpy_hands_out_as_bytes_is_refused_in_one_line(runner, tmp_path):
    # 16 zero bytes over the first member's entry in the zip's directory (found by the test
    # above): NumPy then gives that member as raw bytes, not an array, and eval had a traceback
    raw = bytearray(_binary_files(tmp_path)["z.npz"])
    at = raw.index(b"PK\x01\x02") + 5
    raw[at:at + 16] = bytes(16)
    result = run_eval(runner, tmp_path, {"z.npz": bytes(raw), "y.csv": b"0\n2\n1\n1\n"},
                      [str(tmp_path / "z.npz")])
    assert result.exit_code == 2
    assert "member 'logits' is not an .npy array" in result.stderr


def _rows(n: int = 40) -> str:
    """Returns a valid CSV of n rows of 3 logits and a label."""
    lines = [f"{(i * 7) % 11 - 5}.5,{i % 3},{-i / 8},{i % 3}" for i in range(n)]
    return "z0,z1,z2,label\n" + "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(at=st.integers(0, 10_000), noise=st.sampled_from(NOISE), cell=st.booleans(),
       wide=st.booleans())
def test_one_fault_gives_the_fast_reader_the_strict_readers_result_or_message(
        runner, tmp_path, monkeypatch, at, noise, cell, wide):
    # the fast reader reads a block it cannot judge with the strict reader, that block alone:
    # one fault anywhere must end as the whole file read by the strict reader ends
    text = _rows()
    if cell:  # a cell replaced
        cells = text.split(",")
        c = 4 + at % (len(cells) - 4)  # past the header
        cells[c] = noise + ("\n" + cells[c].split("\n", 1)[1] if "\n" in cells[c] else "")
        text = ",".join(cells)
    else:  # a piece put in anywhere past the header
        at = 15 + at % (len(text) - 15)
        text = text[:at] + noise + text[at:]
    files = {"z.csv": text.encode()}
    outcomes = []
    for threshold in (1 << 60, 0):  # strict, fast
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        monkeypatch.setattr(stream, "BLOCK_BYTES", 90)  # some 5 lines a block
        monkeypatch.setattr(stream, "WIDE_CSV_COLUMNS", 0 if wide else 1 << 30)
        result = run_eval(runner, tmp_path, files, [str(tmp_path / "z.csv")])
        out = tmp_path / "out.csv"
        outcomes.append((result.exit_code, result.stdout, result.stderr,
                         out.read_bytes() if result.exit_code == 0 else None))
    strict, fast = outcomes
    if strict != fast and re.search(r"row has \d+ cells?, the header has", strict[2]):
        # the strict reader counts every row's cells before it reads a number; the fast reader
        # meets a bad cell in a block before the short row in the next first (a line broken in
        # two: an empty last cell, then a row of one cell)
        line = lambda message: int(re.search(r"line (\d+)", message).group(1))  # noqa: E731
        assert fast[0] == 2 and line(fast[2]) < line(strict[2]), (text, fast[2])
        return
    assert strict == fast, text


@pytest.mark.parametrize("wide", [False, True])
def test_a_byte_order_mark_beginning_a_block_is_a_cells_as_for_the_strict_reader(
        runner, tmp_path, monkeypatch, wide):
    # Polars skips a byte-order mark that begins its input: the first line of a block read
    # '\ufeff-5.5' as -5.5 where the strict reader refuses the cell (found by the test above)
    lines = _rows().splitlines(keepends=True)
    lines[1] = "\ufeff" + lines[1]  # the first block's first line
    errors = set()
    for threshold in (1 << 60, 0):  # strict, fast
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        monkeypatch.setattr(stream, "BLOCK_BYTES", 90)
        monkeypatch.setattr(stream, "WIDE_CSV_COLUMNS", 0 if wide else 1 << 30)
        body = "".join(lines).encode()
        errors.add(run_eval(runner, tmp_path, {"z.csv": body}, [str(tmp_path / "z.csv")]).stderr)
    assert len(errors) == 1 and "line 2, column 'z0': logit '\\ufeff-5.5' is not a number" in errors.pop()
