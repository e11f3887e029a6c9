"""``rnnlab data prepare``: text / JSON lines, plain / xz / gzip / zstd / bzip2, files and folders -> one
raw byte file + manifest; corrupt shards, atomic output, streaming."""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import json
import lzma
import os
import random
import resource
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention

# a core dependency (installed with rnnlab); a GPU machine staged for suites runs without it, and
# its `pytest -m gpu` collects this file too: skipped there rather than an import error
zstandard = pytest.importorskip("zstandard")

from rnnlab.cli import main  # noqa: E402
from rnnlab.data import prepare as prep  # noqa: E402
from rnnlab.signals import stops_as_ctrl_c  # noqa: E402

zstd = zstandard.ZstdCompressor(write_checksum=True).compress  # as the zstd command writes frames
COMPRESS = {".xz": lzma.compress, ".gz": gzip.compress, ".zst": zstd, ".bz2": bz2.compress}


def _jsonl(*texts: str, field: str = "text") -> bytes:
    return b"".join(json.dumps({field: t, "meta": {"pile_set_name": "x"}}).encode() + b"\n" for t in texts)


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnnlab data prepare: error: ") and "\n" not in err, err
    return err


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_every_format_from_files_and_folders(tmp_path, capsys):
    shards = tmp_path / "shards"
    (shards / "sub").mkdir(parents=True)
    (shards / "a.txt").write_bytes(b"plain text\n")
    (shards / "b.txt.xz").write_bytes(lzma.compress(b"xz text"))
    (shards / "sub" / "c.txt.gz").write_bytes(gzip.compress(b"gz text"))
    (shards / "sub" / "d.txt.zst").write_bytes(zstd(b"zst frame 1, ") + zstd(b"frame 2"))  # two frames
    (shards / "sub" / "f.txt.bz2").write_bytes(bz2.compress(b"bz2 stream 1, ") + bz2.compress(b"stream 2"))  # pbzip2
    (shards / "e.jsonl").write_bytes(_jsonl("doc one", "") + b"\n" + _jsonl("doc \u00e9"))  # blank line, empty doc
    (shards / "README.md").write_bytes(b"not a shard")  # a folder contributes *.txt / *.jsonl only
    (shards / ".hidden.txt").write_bytes(b"skipped")
    pile = tmp_path / "00.jsonl.zst"  # the Pile's own format, named explicitly
    pile.write_bytes(zstd(_jsonl("pile a", "pile b")))
    odd = tmp_path / "notes.xz"  # a compressed file of any other name is text
    odd.write_bytes(lzma.compress(b"odd"))
    out = tmp_path / "corpus" / "all.txt"
    assert main(["data", "prepare", str(pile), str(shards), str(odd), "--out", str(out), "--no-progress"]) == 0
    assert "documents from 8 source files;" in capsys.readouterr().out  # README and .hidden skipped

    docs = [b"pile a", b"pile b", b"plain text\n", b"xz text", b"doc one", "doc \u00e9".encode(),
            b"gz text", b"zst frame 1, frame 2", b"bz2 stream 1, stream 2", b"odd"]
    assert out.read_bytes() == b"\n\n".join(docs)
    m = json.loads(prep.manifest_path(out).read_text())
    assert m["bytes"] == out.stat().st_size and m["documents"] == len(docs)
    assert m["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    names = [p.split("/")[-1] for p in (s["path"] for s in m["sources"])]
    assert names == ["00.jsonl.zst", "a.txt", "b.txt.xz", "e.jsonl", "c.txt.gz", "d.txt.zst", "f.txt.bz2", "notes.xz"]
    for s in m["sources"]:
        raw = open(s["path"], "rb").read()
        assert s["sha256"] == hashlib.sha256(raw).hexdigest() and s["size"] == len(raw)
    assert [(s["format"], s["documents"], s["bytes"]) for s in m["sources"]][:4] == [
        ("jsonl.zst", 2, 12), ("text", 1, 11), ("text.xz", 1, 7), ("jsonl", 2, 13)]
    assert _leftovers(out.parent) == []


def test_a_folder_named_like_a_shard_is_walked_not_read(tmp_path):
    """A folder's subfolder called ``more.txt`` is a folder: its files are sources, it is not one."""
    shards = tmp_path / "shards"
    (shards / "more.txt").mkdir(parents=True)
    (shards / "more.txt" / "inner.txt").write_bytes(b"inner")
    (shards / "a.txt").write_bytes(b"a")
    assert [s.path.name for s in prep.find_sources([shards])] == ["a.txt", "inner.txt"]


def test_a_hidden_folder_in_a_source_folder_is_skipped(tmp_path):
    """Hidden entries are skipped at any depth: a ``.cache/`` folder's shards are not sources."""
    shards = tmp_path / "shards"
    (shards / ".cache").mkdir(parents=True)
    (shards / ".cache" / "old.txt").write_bytes(b"stale")
    (shards / "a.txt").write_bytes(b"a")
    assert [s.path.name for s in prep.find_sources([shards])] == ["a.txt"]


def test_one_file_named_two_ways_is_given_twice(tmp_path):
    """A source is the file, not its spelling: ``a.txt`` and ``sub/../a.txt`` are refused as one
    file given twice (its documents would be written twice)."""
    (tmp_path / "sub").mkdir()
    src = tmp_path / "a.txt"
    src.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"^source .*a\.txt is given twice$"):
        prep.find_sources([src, tmp_path / "sub" / ".." / "a.txt"])


def test_pile_shard_feeds_training(tmp_path, capsys):
    shard = tmp_path / "00.jsonl.zst"
    shard.write_bytes(zstd(_jsonl(*(f"document {i}: the quick brown fox. " * 3 for i in range(60)))))
    out = tmp_path / "pile.txt"
    assert main(["data", "prepare", str(shard), "--out", str(out), "--separator", r"\x00", "--no-progress"]) == 0
    assert out.read_bytes().count(b"\x00") == 59
    assert main(["train", "--model", "e1", "--dim", "16", "--depth", "1", "--seq-len", "16", "--batch-size", "2",
                 "--steps", "2", "--precision", "fp32", "--device", "cpu", "--no-progress", "--data", str(out),
                 "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == str(out)


def test_field_and_separator(tmp_path):
    src = tmp_path / "x.jsonl.gz"
    src.write_bytes(gzip.compress(_jsonl("a", "b", field="content")))
    out = tmp_path / "x.txt"
    prep.prepare([src], out, field="content", separator=prep.parse_separator(r"\n<|doc|>\t"), progress=False)
    assert out.read_bytes() == b"a\n<|doc|>\tb"
    assert prep.parse_separator("\u00a7") == "\u00a7".encode()  # typed characters are their UTF-8 bytes
    assert prep.parse_separator(r"\0|\x7f\\q") == b"\0|\x7f\\q"  # \\ is one backslash
    assert prep.parse_separator(r"\r\n\r\n") == b"\r\n\r\n"  # CRLF documents
    for bad, shown in ((r"\u2028", r"\u"), (r"a\qb", r"\q"), (r"\012", r"\012"), (r"\xZ1", r"\x"), ("x\\", "\\"),
                       ("x\\\n", r"'\\\n'")):  # a backslash and a newline: shown escaped, the message one line
        with pytest.raises(ValueError, match="separator") as e:  # never written literally
            prep.parse_separator(bad)
        assert str(e.value) == (f"separator: unknown escape {shown}; the escapes are \\n \\r \\t \\0 \\xNN "
                                "and \\\\ (a backslash)")


def test_the_manifest_records_a_non_utf8_separator_byte_for_byte(tmp_path):
    """The manifest's ``separator`` is the separator's bytes as latin-1 text (one character per
    byte), so a byte like ``\\xff`` that is no UTF-8 reads back exactly."""
    (tmp_path / "a.txt").write_bytes(b"a")
    (tmp_path / "b.txt").write_bytes(b"b")
    out = tmp_path / "o.txt"
    m = prep.prepare([tmp_path / "a.txt", tmp_path / "b.txt"], out, separator=prep.parse_separator(r"\xff\n"),
                     progress=False)
    assert out.read_bytes() == b"a\xff\nb" and m["separator"] == "\u00ff\n"
    assert json.loads(prep.manifest_path(out).read_text())["separator"].encode("latin-1") == b"\xff\n"


def test_a_separator_of_bytes_no_utf8_is_written_as_the_shell_passed_them(tmp_path, capsys):
    """``--separator $'\\xfe'``: Python decodes the argument's non-UTF-8 byte as a lone surrogate,
    which UTF-8 cannot encode; the separator is the bytes passed, not an encoding error."""
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_bytes(name[:1].encode())
    out = tmp_path / "o.txt"
    assert main(["data", "prepare", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--out", str(out),
                 "--separator", os.fsdecode(b"\xfe\xc3\xa9\\t"), "--no-progress"]) == 0
    assert out.read_bytes() == b"a\xfe\xc3\xa9\tb"


def test_unknown_separator_escape_is_one_line(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_bytes(b"x")
    err = _err(capsys, ["data", "prepare", str(src), "--out", str(tmp_path / "o.txt"), "--separator", r"\q"])
    assert err == ("rnnlab data prepare: error: separator: unknown escape \\q; the escapes are "
                   "\\n \\r \\t \\0 \\xNN and \\\\ (a backslash)")
    assert not (tmp_path / "o.txt").exists()


@pytest.mark.parametrize("content", [b"", b'\n{"text": ""}\n\n'])
def test_sources_without_text_are_refused(tmp_path, capsys, content):
    """Nothing to write (an empty file; JSON lines of empty or blank documents): one line, exit 2,
    no corpus, manifest or temporary file left behind (training on an empty corpus fails later)."""
    src = tmp_path / "empty.jsonl"
    src.write_bytes(content)
    out = tmp_path / "new" / "sub" / "d.txt"
    err = _err(capsys, ["data", "prepare", str(src), "--out", str(out), "--no-progress"])
    assert err.endswith(f"error: no text in the source file (every document is empty); {out} not written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]  # nor the folders made for it


def test_summary_line_counts_in_the_singular(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_bytes(b"x")
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "o.txt"), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'o.txt'}: 1 byte, 1 document from 1 source file;")


@pytest.mark.parametrize("suffix", [".xz", ".gz", ".zst", ".bz2"])
@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_corrupt_shard_is_named(tmp_path, capsys, suffix, damage):
    good = tmp_path / f"good.txt{suffix}"
    good.write_bytes(COMPRESS[suffix](b"fine"))
    data = COMPRESS[suffix](_jsonl(*(f"doc {i} " * 50 for i in range(100))))
    bad = tmp_path / f"bad.jsonl{suffix}"
    mid = len(data) // 2
    bad.write_bytes(data[:mid] if damage == "truncated" else data[:mid] + b"\xff" * 16 + data[mid + 16:])
    out = tmp_path / "out.txt"
    err = _err(capsys, ["data", "prepare", str(good), str(bad), "--out", str(out), "--no-progress"])
    assert f"{bad}: corrupt or truncated jsonl{suffix} file" in err
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".xz", ".gz", ".zst", ".bz2"])
def test_an_empty_compressed_shard_is_refused_not_read_as_no_text(tmp_path, capsys, suffix):
    """A 0-byte shard (a failed download) holds no stream: gzip and zstandard would read it as an empty
    document and the corpus would lack the shard unnoticed. A stream of no text is still fine."""
    (tmp_path / f"a.txt{suffix}").write_bytes(COMPRESS[suffix](b""))
    (tmp_path / f"b.jsonl{suffix}").write_bytes(b"")
    (tmp_path / "c.txt").write_bytes(b"fine")
    out = tmp_path / "o" / "out.txt"
    err = _err(capsys, ["data", "prepare", str(tmp_path), "--out", str(out), "--no-progress"])
    assert f"{tmp_path / f'b.jsonl{suffix}'}: corrupt or truncated jsonl{suffix} file (it is empty" in err
    assert not out.parent.exists() and _leftovers(tmp_path) == []
    (tmp_path / f"b.jsonl{suffix}").unlink()
    assert prep.prepare([tmp_path], out, progress=False)["documents"] == 1


def test_a_zst_shard_with_a_long_window_is_read_not_called_corrupt(tmp_path):
    """A frame whose window is over the decoder's default 128 MiB (``zstd --long``; 256 MiB here, the
    limit being 2 GiB) is valid: it is unpacked, not reported as a corrupt or truncated file."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=28, enable_ldm=True)
    co = zstandard.ZstdCompressor(compression_params=params).compressobj()
    src = tmp_path / "long.jsonl.zst"
    src.write_bytes(co.compress(_jsonl("one", "two")) + co.flush())
    assert zstandard.get_frame_parameters(src.read_bytes()).window_size == 1 << 28
    prep.prepare([src], tmp_path / "o.txt", progress=False)
    assert (tmp_path / "o.txt").read_bytes() == b"one\n\ntwo"


@pytest.mark.parametrize("suffix, kind", [(".gz", "gzip"), (".xz", "xz"), (".zst", "Zstandard"), (".bz2", "bzip2")])
def test_a_compressed_file_not_named_so_is_refused_not_copied(tmp_path, capsys, suffix, kind):
    """``00.jsonl.gzip`` (or a ``.txt`` that is compressed) would be copied as text, its compressed
    bytes into the corpus: refused before anything is written, naming the suffix that unpacks it."""
    text = tmp_path / "a.txt"
    text.write_bytes(b"fine")
    odd = tmp_path / "00.jsonl.gzip"
    odd.write_bytes(COMPRESS[suffix](_jsonl("doc")))
    out = tmp_path / "out.txt"
    err = _err(capsys, ["data", "prepare", str(text), str(odd), "--out", str(out), "--no-progress"])
    assert f"{odd} is {kind}-compressed, but its name does not end in {suffix}" in err
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("content, msg", [
    (b'{"text": "ok"}\n{"text": tru\n', "line 2 is not valid JSON"),
    # the fields it has, for --field
    (b'{"text": "ok"}\n\n{"body": "x", "id": 3}\n', "line 3 has no field 'text' (its fields: 'body', 'id'; choose "
                                                   "one with --field)"),
    (b'["text"]\n', "line 1 is not a JSON object (list), so it has no field 'text'"),
    # there, but not text: not "has no field" and "choose it with --field"
    (b'{"text": 5}\n', "line 1's field 'text' is 5, not a string"),
    (b'{"text": null}\n', "line 1's field 'text' is null, not a string"),
    (b'{"text": "\xff\xfe"}\n', "line 1 is not valid JSON"),
])
def test_bad_json_lines(tmp_path, capsys, content, msg):
    src = tmp_path / "s.jsonl"
    src.write_bytes(content)
    assert msg in _err(capsys, ["data", "prepare", str(src), "--out", str(tmp_path / "o.txt"), "--no-progress"])


def test_user_errors(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    assert "already exists" in _err(capsys, ["data", "prepare", str(src), "--out", str(src)])
    assert "source not found" in _err(capsys, ["data", "prepare", str(tmp_path / "nope"), "--out", "o"])
    assert "holds no *.txt or *.jsonl" in _err(capsys, ["data", "prepare", str(tmp_path / "empty"), "--out", "o"])
    assert "given twice" in _err(capsys, ["data", "prepare", str(src), str(tmp_path), "--out",
                                          str(tmp_path / "o.txt")])


def test_interrupted_prepare_leaves_no_file(tmp_path, capsys, monkeypatch):
    srcs = []
    for i in range(3):
        srcs.append(tmp_path / f"{i}.txt")
        srcs[-1].write_bytes(b"document %d" % i)
    calls = []

    def interrupt_on_third_write(self, data):
        calls.append(data)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(prep._Corpus, "_write", interrupt_on_third_write)
    out = tmp_path / "out.txt"
    assert main(["data", "prepare", *map(str, srcs), "--out", str(out), "--no-progress"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() and not prep.manifest_path(out).exists() and _leftovers(tmp_path) == []


def test_the_manifest_is_in_place_before_the_corpus_and_gone_if_the_corpus_is_not(tmp_path, monkeypatch):
    """The corpus's rename to --out is the last step: its manifest is renamed into place just before,
    so a kill between the two never leaves a corpus without its record, and an interrupt between
    them leaves neither."""
    src = tmp_path / "a.txt"
    src.write_bytes(b"one document")
    renamed, replace = [], os.replace

    def record(a, b):
        renamed.append(Path(b).name)
        replace(a, b)

    monkeypatch.setattr(os, "replace", record)
    prep.prepare([src], tmp_path / "c.txt", progress=False)
    assert renamed == ["c.txt.manifest.json", "c.txt"]

    def interrupted_after_the_manifest(a, b):
        replace(a, b)
        if Path(b).name == "d.txt.manifest.json":
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted_after_the_manifest)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare([src], tmp_path / "d.txt", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.txt", "c.txt.manifest.json"]


def test_each_file_is_on_the_disk_before_it_takes_its_name(tmp_path, monkeypatch):
    """The corpus and its manifest are flushed and fsynced under their temporary names, then renamed:
    a power loss after the rename leaves them whole, not a FILE of the bytes that reached the disk
    (a truncated corpus that trains without a word)."""
    src = tmp_path / "a.txt"
    src.write_bytes(b"one document")
    events, fsync, replace = [], os.fsync, os.replace

    def record_fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name, os.fstat(fd).st_size))
        fsync(fd)

    def record_replace(a, b):
        events.append(("replace", Path(a).name, Path(b).name))
        replace(a, b)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    prep.prepare([src], tmp_path / "c.txt", progress=False)
    manifest, corpus = (f".{name}.{os.getpid()}.part" for name in ("c.txt.manifest.json", "c.txt"))
    assert events == [("fsync", manifest, prep.manifest_path(tmp_path / "c.txt").stat().st_size),
                      ("replace", manifest, "c.txt.manifest.json"),
                      ("fsync", corpus, len(b"one document")), ("replace", corpus, "c.txt")]


def test_a_sigterm_where_ctrl_c_is_ignored_leaves_no_file(tmp_path, capsys, monkeypatch):
    """``rnnlab data prepare ... &`` in a script ignores Ctrl-C, and a SIGTERM there (``kill``, a
    scheduler's stop) ended the process at once, leaving the temporary corpus beside --out: under
    the command line's handling of stops (``stops_as_ctrl_c``) it is an interrupt."""
    srcs = []
    for i in range(3):
        srcs.append(tmp_path / f"{i}.txt")
        srcs[-1].write_bytes(b"document %d" % i)
    calls, ended = [], []

    def sigterm_on_third_write(self, data):
        calls.append(data)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGTERM)

    def end(signum, frame):  # stands in for the process's end (the default action) here
        ended.append(signum)

    monkeypatch.setattr(prep._Corpus, "_write", sigterm_on_third_write)
    before = signal.signal(signal.SIGTERM, end)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the autouse fixture puts Python's handler back
    try:
        out = tmp_path / "out.txt"
        with stops_as_ctrl_c():  # as main() without arguments, the `rnnlab` command, has it
            assert main(["data", "prepare", *map(str, srcs), "--out", str(out), "--no-progress"]) == 130
        assert signal.getsignal(signal.SIGTERM) is end and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
    assert ended == [] and "interrupted" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path):
    """A full disk (here a file-size limit: EFBIG) fails a write, then again the flush of what was
    buffered as the temporary corpus closes: that file (hidden, and as large as the disk let it
    grow) is deleted all the same, and the folder made for --out with it. The error line names the
    file being written (the system's error names none)."""
    src = tmp_path / "d.jsonl"
    src.write_bytes(_jsonl(*(f"document {i}" for i in range(20_000))))

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    code = "import sys; from rnnlab.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "data", "prepare", str(src), "--out",
                        str(tmp_path / "new" / "c.txt"), "--no-progress"],
                       preexec_fn=limit_file_size, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"File too large: {tmp_path / 'new' / 'c.txt'}" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_a_read_error_names_the_source_not_the_output(tmp_path, monkeypatch, capsys):
    """A source whose disk fails a read (EIO, which names no file) is the file the error line names;
    AtomicFile names what is left unnamed in its block after the file being written, which this is not."""
    src = tmp_path / "a.txt"
    src.write_text("hello world\n" * 10)

    class Failing:
        name = str(src)

        def readinto(self, b):
            raise OSError(errno.EIO, "Input/output error")

    init = prep._HashingReader.__init__
    monkeypatch.setattr(prep._HashingReader, "__init__", lambda self, f, bar: init(self, Failing(), bar))
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "out" / "c.txt"), "--no-progress"]) == 2
    assert f"Input/output error: {src}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_lines_span_blocks():
    blocks = [b"ab", b"c\nde", b"", b"f\n\ng", b"h"]
    assert list(prep._lines(blocks)) == [b"abc", b"def", b"", b"gh"]


def test_streams_without_holding_a_shard(tmp_path):
    """A 6 MB text shard (zstd) and an 8 MB JSON-lines shard (gzip) go through while Python holds
    under 4 MB (a few blocks, and one document at a time)."""
    rng = random.Random(0)
    words = [bytes(rng.choices(range(97, 123), k=rng.randint(1, 9))) for _ in range(5000)]
    text = b" ".join(rng.choices(words, k=1_200_000))[: 6 << 20]
    (tmp_path / "big.txt.zst").write_bytes(zstd(text))
    (tmp_path / "many.jsonl.gz").write_bytes(gzip.compress(_jsonl(*["y" * 1000] * 8000)))
    tracemalloc.start()
    try:
        m = prep.prepare([tmp_path / "big.txt.zst", tmp_path / "many.jsonl.gz"], tmp_path / "o.txt",
                         progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert m["bytes"] == len(text) + 2 + 8000 * 1000 + 7999 * 2
    assert peak < 4 << 20, peak


def test_blank_json_lines_are_skipped_and_documents_kept_byte_for_byte(tmp_path):
    """What prepare strips: JSON lines that are blank or whitespace only (CRLF endings included)
    are skipped, a line's trailing ``\\r`` is JSON whitespace, an empty document is skipped;
    nothing else. Documents are written byte for byte, their own leading and trailing spaces and
    line endings kept (a document of whitespace only too), a text file's CRLF as well. The
    manifest's sha256 is that of the bytes written."""
    src = tmp_path / "dos.jsonl"
    src.write_bytes(b'{"text": "  one  "}\r\n\r\n \t \r\n{"text": ""}\r\n{"text": " \\n"}\r\n{"text": "two\\r\\n"}\r\n'
                    b'   ')  # ends in a blank line without a newline
    txt = tmp_path / "dos.txt"
    txt.write_bytes(b"  three\r\n\r\n")
    out = tmp_path / "o.txt"
    m = prep.prepare([src, txt], out, progress=False)
    data = out.read_bytes()
    assert data == b"  one  \n\n \n\n\ntwo\r\n\n\n  three\r\n\r\n"
    assert (m["bytes"], m["documents"], m["sha256"]) == (len(data), 4, hashlib.sha256(data).hexdigest())
    assert [(s["documents"], s["bytes"]) for s in m["sources"]] == [(3, 14), (1, 11)]


@pytest.mark.parametrize("suffix", [".xz", ".zst", ".bz2"])
def test_streams_one_after_another_are_read_to_the_end_of_the_file(tmp_path, capsys, suffix):
    """A shard of several xz streams (NUL stream padding between them) or Zstandard frames is read
    whole; bytes after a stream that start no other (appended junk, a damaged later stream's
    header), which Python's lzma reader drops without a word, stop the run in one line."""
    one, two = COMPRESS[suffix](b"first stream. "), COMPRESS[suffix](b"second stream.")
    good = tmp_path / f"good.txt{suffix}"
    good.write_bytes(one + (b"\0" * 8 if suffix == ".xz" else b"") + two)
    out = tmp_path / "out.txt"
    assert main(["data", "prepare", str(good), "--out", str(out), "--no-progress"]) == 0
    assert out.read_bytes() == b"first stream. second stream."
    capsys.readouterr()
    for i, tail in enumerate((b"junk after the stream", b"\xff" * 8 + two[8:])):
        bad = tmp_path / f"bad{i}.txt{suffix}"
        bad.write_bytes(one + tail)
        err = _err(capsys, ["data", "prepare", str(bad), "--out", str(tmp_path / f"o{i}.txt"), "--no-progress"])
        assert f"{bad}: corrupt or truncated text{suffix} file (" in err and not (tmp_path / f"o{i}.txt").exists()


def test_a_zip_archive_is_refused_not_copied(tmp_path, capsys):
    """A zip archive (of any name) would be copied as text, its compressed bytes into the corpus:
    refused in one line, saying to extract its files."""
    import zipfile

    archive = tmp_path / "shards.txt"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", "some text " * 20)
    err = _err(capsys, ["data", "prepare", str(archive), "--out", str(tmp_path / "o.txt"), "--no-progress"])
    assert err.endswith(f"{archive} is a zip archive, which prepare does not open: extract its files and give "
                        "them instead") and not (tmp_path / "o.txt").exists()


def test_recorded_sha256s_cover_every_byte(tmp_path):
    """The manifest's corpus sha256 equals hashlib.sha256 of the output file, over documents and
    separators spanning many read blocks; each source's sha256 and size cover the whole file as
    stored, the stream padding after an xz stream too."""
    docs = [bytes([97 + i]) * (prep.READ_SIZE + 1000 * i) for i in range(3)]
    shard = tmp_path / "a.txt.xz"
    shard.write_bytes(lzma.compress(docs[0]) + b"\0" * (4 * prep.READ_SIZE))  # xz's stream padding: no text
    lines = tmp_path / "b.jsonl"
    lines.write_bytes(_jsonl(*(d.decode() for d in docs[1:])))
    out = tmp_path / "o.txt"
    m = prep.prepare([shard, lines], out, separator=b"\0|\0", progress=False)
    data = out.read_bytes()
    assert data == b"\0|\0".join(docs)
    assert m["sha256"] == hashlib.sha256(data).hexdigest() and m["bytes"] == len(data)
    assert json.loads(prep.manifest_path(out).read_text())["sha256"] == m["sha256"]
    for s, path in zip(m["sources"], (shard, lines)):
        raw = path.read_bytes()
        assert (s["size"], s["sha256"]) == (len(raw), hashlib.sha256(raw).hexdigest()), path.name


def test_prepared_files_get_the_umask_mode(tmp_path):
    """The corpus and its manifest are written under a private temporary name and renamed: they
    end with the mode any new file gets under the umask (readable by the group under 022), not
    the temporary file's owner-only 0600."""
    import os

    (tmp_path / "a.txt").write_bytes(b"text")
    old = os.umask(0o022)
    try:
        assert main(["data", "prepare", str(tmp_path / "a.txt"), "--out", str(tmp_path / "c.txt"), "--no-progress"]) == 0
        os.umask(0o077)
        assert main(["data", "prepare", str(tmp_path / "a.txt"), "--out", str(tmp_path / "d.txt"), "--no-progress"]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.name != "a.txt"}
    assert modes == {"c.txt": 0o644, "c.txt.manifest.json": 0o644, "d.txt": 0o600, "d.txt.manifest.json": 0o600}


def test_a_lone_surrogate_is_replaced_not_dropped(tmp_path):
    """JSON can spell a lone surrogate (``\\ud800``), which UTF-8 cannot hold: it becomes one
    replacement character (U+FFFD, not "?") and the rest of the document is kept around it; a valid
    surrogate pair is the one character it spells."""
    src = tmp_path / "s.jsonl"
    src.write_bytes(b'{"text": "a\\ud800b"}\n{"text": "\\udfff"}\n{"text": "\\ud83d\\ude00\\ud83d"}\n')
    out = tmp_path / "o.txt"
    m = prep.prepare([src], out, progress=False)
    assert out.read_bytes().split(b"\n\n") == ["a\ufffdb".encode(), "\ufffd".encode(), "\U0001F600\ufffd".encode()]
    assert m["documents"] == 3


@pytest.mark.parametrize("name, mode", [("shards.tar", "w"), ("shards.txt", "w"), ("shards.tar.gz", "w:gz"),
                                        ("openwebtext.tar.xz", "w:xz"), ("docs.jsonl.bz2", "w:bz2")])
def test_a_tar_archive_is_refused_not_copied(tmp_path, capsys, name, mode):
    """A tar archive, compressed or not and of any name, would be copied as text: its 512-byte headers
    and NUL padding (and any compressed member's bytes) into the corpus. Refused in one line, as a zip
    archive is, and nothing is written."""
    import tarfile

    member = tmp_path / "a.txt"
    member.write_bytes(b"some text " * 20)
    archive = tmp_path / name
    with tarfile.open(archive, mode) as t:
        t.add(member, arcname="a.txt")
    out = tmp_path / "o.txt"
    err = _err(capsys, ["data", "prepare", str(member), str(archive), "--out", str(out), "--no-progress"])
    packed = {"w": "", "w:gz": " (gzip-compressed)", "w:xz": " (xz-compressed)", "w:bz2": " (bzip2-compressed)"}[mode]
    assert err.endswith(f"{archive} is a tar archive{packed}, which prepare does not open: extract its files and "
                        "give them instead") and not out.exists() and _leftovers(tmp_path) == []
    # text that merely says "ustar" elsewhere, or is shorter than a tar header, is text
    (tmp_path / "b.txt").write_bytes(b"x" * 300 + b" ustar")
    (tmp_path / "c.txt").write_bytes(b"ustar")
    assert prep.prepare([tmp_path / "b.txt", tmp_path / "c.txt"], out, progress=False)["bytes"] == 306 + 2 + 5


KINDS = {".gz": "gzip", ".xz": "xz", ".zst": "Zstandard", ".bz2": "bzip2"}


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".zst", ".bz2"])
def test_a_file_named_compressed_that_is_not_so_is_refused_saying_so(tmp_path, capsys, suffix):
    """A shard named ``.gz`` that is not gzip (a download tool that unpacked it, a shard compressed
    another way) was called "corrupt or truncated" (Not a gzipped file, Unknown frame descriptor,
    Invalid data stream), sending the user to download it again: it is refused naming what it is."""
    plain = tmp_path / f"plain.jsonl{suffix}"
    plain.write_bytes(_jsonl("doc"))
    err = _err(capsys, ["data", "prepare", str(plain), "--out", str(tmp_path / "o.txt"), "--no-progress"])
    assert err.endswith(f"{plain} is not {KINDS[suffix]}-compressed (it starts b'{{\"text\":'), though its name ends "
                        f"in {suffix}: if it is uncompressed, remove {suffix} from its name")
    other = ".xz" if suffix == ".gz" else ".gz"
    odd = tmp_path / f"odd.jsonl{suffix}"
    odd.write_bytes(COMPRESS[other](_jsonl("doc")))
    err = _err(capsys, ["data", "prepare", str(odd), "--out", str(tmp_path / "o.txt"), "--no-progress"])
    assert err.endswith(f"{odd} is {KINDS[other]}-compressed, but its name ends in {suffix}, which is what makes "
                        f"prepare unpack {KINDS[suffix]}: rename it to end in {other}")
    assert not (tmp_path / "o.txt").exists() and _leftovers(tmp_path) == []
    # a file cut inside its stream's first bytes is still reported as truncated
    cut = tmp_path / f"cut.txt{suffix}"
    cut.write_bytes(COMPRESS[suffix](b"text")[:2])
    err = _err(capsys, ["data", "prepare", str(cut), "--out", str(tmp_path / "o.txt"), "--no-progress"])
    assert f"{cut}: corrupt or truncated text{suffix} file" in err


def test_a_zst_shard_starting_with_a_skippable_frame_is_read(tmp_path):
    """pzstd writes a skippable frame before each frame: a valid shard, not "not Zstandard"; named
    without .zst, it is refused as Zstandard (its compressed bytes would be copied as text)."""
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"size"
    src = tmp_path / "p.jsonl.zst"
    src.write_bytes(skippable + zstd(_jsonl("one")) + skippable + zstd(_jsonl("two")))
    prep.prepare([src], tmp_path / "o.txt", progress=False)
    assert (tmp_path / "o.txt").read_bytes() == b"one\n\ntwo"
    renamed = tmp_path / "p.jsonl"  # named without .zst: refused, not copied as text
    src.rename(renamed)
    with pytest.raises(prep.CorpusError, match="is Zstandard-compressed, but its name does not end in .zst"):
        prep.prepare([renamed], tmp_path / "o2.txt", progress=False)
