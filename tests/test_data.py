import hashlib
import os

import numpy as np
import pytest
import torch

from rnnlab.data import (
    BatchStream,
    ByteCorpus,
    Split,
    default_train_path,
    default_val_path,
    eval_num_windows,
    eval_windows,
    file_split,
    heldout_split,
    load_splits,
    sample_offsets,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


@pytest.fixture
def corpus_file(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 200, size=50_000, dtype=np.uint8)
    p = tmp_path / "corpus.bin"
    p.write_bytes(data.tobytes())
    return p, data


def split_of(path):
    c = ByteCorpus(path)
    return Split(c, 0, len(c), "train")


# ---- ByteCorpus -------------------------------------------------------------------------

def test_bytecorpus_memmap_and_slicing(corpus_file):
    p, data = corpus_file
    c = ByteCorpus(p)
    assert len(c) == len(data) and c.path == p
    assert isinstance(c.data, np.memmap) and c.data.dtype == np.uint8
    np.testing.assert_array_equal(c[100:200], data[100:200])
    assert isinstance(c[100:200], np.ndarray) and c[5] == data[5]


def test_bytecorpus_pickles_by_path(corpus_file):
    import pickle

    p, data = corpus_file
    s = load_splits(p, val_fraction=0.1)
    blob = pickle.dumps(BatchStream(s.train, 2, 8, seed=0))
    assert len(blob) < 5_000  # the 50 kB of data are not in the pickle
    bs = pickle.loads(blob)
    assert torch.equal(bs.batch(3), BatchStream(s.train, 2, 8, seed=0).batch(3))


def test_bytecorpus_missing(tmp_path):
    p = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=f"corpus file not found: {p}"):
        ByteCorpus(p)


def test_bytecorpus_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory, expected a raw byte file") as e:
        ByteCorpus(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_bytecorpus_empty(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    with pytest.raises(ValueError, match=f"corpus file {p} is empty"):
        ByteCorpus(p)


def test_bytecorpus_pipe(tmp_path):
    """A pipe (``--data <(zcat ...)``) was called empty (its size is 0); it is named for what it is."""
    p = tmp_path / "pipe"
    os.mkfifo(p)
    with pytest.raises(ValueError, match=f"^corpus file {p} is not a regular file \\(a pipe or a device\\?\\)"):
        ByteCorpus(p)


@pytest.mark.parametrize("magic,kind", [(b"\x1f\x8b\x08\x00", "gzip"), (b"\xfd7zXZ\x00\x00", "xz"),
                                        (b"\x28\xb5\x2f\xfd\x00", "Zstandard"), (b"BZh91AY&SY\x00", "bzip2"),
                                        (b"BZh1\x17rE8P\x90", "bzip2"),
                                        (b"\x50\x2a\x4d\x18\x04\x00\x00\x00", "Zstandard")])  # pzstd's first
def test_bytecorpus_refuses_compressed_files(tmp_path, magic, kind):
    """A compressed shard given as a corpus is refused (it would train on its compressed bytes),
    pointing to `rnnlab data prepare`, which unpacks a file by its name's ending: a name without it
    is told to rename the file first (prepare refuses it too); raw text that merely starts with one of
    those bytes is not refused (nor text that starts "BZh9" as bzip2 does)."""
    suffix = {"gzip": ".gz", "xz": ".xz", "Zstandard": ".zst", "bzip2": ".bz2"}[kind]
    p = tmp_path / f"shard.jsonl{suffix}"
    p.write_bytes(magic + b"rest of the file" * 10)
    with pytest.raises(ValueError, match=f"is {kind}-compressed, and rnnlab reads raw bytes: unpack it first "
                                         f"\\(`rnnlab data prepare {p} --out FILE` for text or JSON lines\\)$"):
        ByteCorpus(p)
    p = p.rename(tmp_path / "shard.jsonl.x")
    with pytest.raises(ValueError, match=f"is {kind}-compressed, and rnnlab reads raw bytes: unpack it first "
                                         f"\\(rename it to end in \\{suffix} \\(NAME\\.txt\\{suffix} for text, "
                                         f"NAME\\.jsonl\\{suffix} for JSON lines\\), then `rnnlab data prepare NEW_NAME"):
        ByteCorpus(p)
    p.write_bytes(magic[:1] + b"rest of the file" * 10)
    assert len(ByteCorpus(p)) == 161
    p.write_bytes(magic[:4] + b"rest of the file" * 10)
    if kind == "bzip2":
        assert len(ByteCorpus(p)) == 164


def test_bytecorpus_refuses_a_zip_archive(tmp_path):
    """A zip archive given as a corpus is refused (it would train on its compressed bytes)."""
    import zipfile

    p = tmp_path / "shards.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("a.txt", "text")
    with pytest.raises(ValueError, match="is a zip archive, and rnnlab reads raw bytes: extract its files"):
        ByteCorpus(p)


def test_bytecorpus_refuses_a_tar_archive(tmp_path):
    """A tar archive given as a corpus is refused (it would train on its headers and NUL padding);
    text that says "ustar" at another byte is read."""
    import tarfile

    (tmp_path / "a.txt").write_bytes(b"text " * 100)
    p = tmp_path / "shards.txt"
    with tarfile.open(p, "w") as t:
        t.add(tmp_path / "a.txt", arcname="a.txt")
    with pytest.raises(ValueError, match=r"^corpus file .*shards\.txt is a tar archive, and rnnlab reads raw bytes: "
                                         r"extract its files first"):
        ByteCorpus(p)
    p.write_bytes(b"x" * 300 + b"ustar")
    assert len(ByteCorpus(p)) == 305


def test_bytecorpus_refuses_json_lines(tmp_path):
    """A ``.jsonl`` file of JSON objects is refused, pointing to `rnnlab data prepare` (its text
    would be trained on inside its JSON, escapes and all), also after a BOM or blank lines; a
    ``.jsonl`` name on other bytes is read."""
    p = tmp_path / "docs.jsonl"
    p.write_bytes(b'{"text": "one document"}\n' * 10)
    with pytest.raises(ValueError, match=r"^corpus file .*docs\.jsonl is JSON lines, and rnnlab reads raw bytes: "
                                         r"extract its text first \(`rnnlab data prepare .*docs\.jsonl --out FILE`\)$"):
        ByteCorpus(p)
    for start in (b"\xef\xbb\xbf", b"\n", b" \r\n\n"):  # a BOM, blank lines: prepare reads its JSON after them
        p.write_bytes(start + b'{"text": "one document"}\n' * 10)
        with pytest.raises(ValueError, match="is JSON lines"):
            ByteCorpus(p)
    p.write_bytes(b"plain text, named .jsonl\n" * 10)
    assert len(ByteCorpus(p)) == 250


# ---- splits -----------------------------------------------------------------------------

def test_a_split_fingerprint_is_its_bytes_sampled_in_64_blocks(tmp_path):
    """``Split.fingerprint`` (what ``--resume`` compares beside the sizes): the SHA-1 of the whole
    split when it is at most 64 blocks of 4 KB, else of 64 blocks spread from its first byte to its
    last; a file of the same bytes under another name gives the same one."""
    data = np.random.default_rng(0).integers(0, 256, 1_000_003, dtype=np.uint8)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(data.tobytes())
    b.write_bytes(data.tobytes())
    split = Split(ByteCorpus(a), 3, 1_000_000)
    starts = np.linspace(0, 1_000_000 - 4096, 64).astype(np.int64)
    want = hashlib.sha1(b"".join(data[3 + i:3 + i + 4096].tobytes() for i in starts)).hexdigest()[:16]
    assert split.fingerprint() == want == Split(ByteCorpus(b), 3, 1_000_000).fingerprint()
    small = Split(ByteCorpus(a), 10, 64 * 4096)
    assert small.fingerprint() == hashlib.sha1(data[10:10 + 64 * 4096].tobytes()).hexdigest()[:16]


def test_tail_split_is_view(corpus_file):
    p, data = corpus_file
    s = load_splits(p, val_fraction=0.1)
    assert s.train.corpus is s.val.corpus  # one memmap
    assert len(s.train) + len(s.val) == len(data) and len(s.val) == 5000
    assert s.train.offset == 0 and s.val.offset == len(s.train)
    np.testing.assert_array_equal(s.val[:], data[-5000:])
    np.testing.assert_array_equal(s.train[:], data[:-5000])
    assert np.shares_memory(s.train.array, s.train.corpus.data)
    train, val = s  # unpacks


@pytest.mark.parametrize("n,fraction,n_val", [(1001, 0.01, 11), (1000, 0.01, 10), (1000, 0.0001, 2)])
def test_tail_split_size_rounds_up_to_at_least_min_len(tmp_path, n, fraction, n_val):
    """The held-out tail is ``max(ceil(len * val_fraction), min_len)`` bytes (min_len = 2)."""
    p = tmp_path / "corpus.bin"
    p.write_bytes(bytes(n))
    s = load_splits(p, val_fraction=fraction)
    assert (len(s.train), len(s.val)) == (n - n_val, n_val)


def test_a_split_may_be_empty_but_never_reaches_outside_its_corpus(corpus_file):
    """``[offset, offset + length)`` inside the corpus: an empty split at either end is a view of
    nothing; a negative length, or one byte past the end, is refused."""
    p, _ = corpus_file
    c = ByteCorpus(p)
    for offset in (0, len(c)):
        s = Split(c, offset, 0, "val")
        assert len(s) == 0 and s.array.size == 0
    for offset, length in ((0, -1), (len(c) - 9, 10), (-1, 1)):
        with pytest.raises(ValueError, match="outside corpus"):
            Split(c, offset, length, "val")


def test_val_data_file(corpus_file, tmp_path):
    p, data = corpus_file
    v = tmp_path / "val.bin"
    v.write_bytes(b"held out text " * 10)
    s = load_splits(p, val_data=v)
    assert len(s.train) == len(data) and s.val.path == v and len(s.val) == 140


def test_split_too_small(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_bytes(b"abc")
    with pytest.raises(ValueError, match="too small to split"):
        load_splits(p, min_len=2)


def test_a_one_byte_count_is_singular(tmp_path):
    """A one-byte file is "1 byte" in the messages that give its size, not "1 bytes" (a held-out one:
    ``test_val_data_file_shorter_than_min_len_is_refused``)."""
    one = tmp_path / "one.txt"
    one.write_bytes(b"a")
    with pytest.raises(ValueError, match=r"\(1 byte\) is too small to split: held-out tail of 2 bytes .* leaves "
                                         r"0 bytes for training"):  # not "-1 bytes": the tail is the whole file
        load_splits(one, min_len=2)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_must_be_strictly_between_0_and_1(tmp_path, fraction):
    p = tmp_path / "corpus.bin"
    p.write_bytes(bytes(1000))
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        load_splits(p, val_fraction=fraction)


def test_split_leaving_exactly_min_len_training_bytes_is_allowed(tmp_path):
    """4 bytes, half held out: 2 bytes of training = min_len, the smallest split allowed."""
    p = tmp_path / "corpus.bin"
    p.write_bytes(b"abcd")
    s = load_splits(p, val_fraction=0.5, min_len=2)
    assert (len(s.train), len(s.val)) == (2, 2)
    with pytest.raises(ValueError, match="too small to split"):
        load_splits(p, val_fraction=0.5, min_len=3)


def test_min_len_below_1_is_refused(tmp_path):
    """``min_len`` 0 would allow an empty held-out or training split: refused by name."""
    p = tmp_path / "corpus.bin"
    p.write_bytes(bytes(1000))
    with pytest.raises(ValueError, match=r"^min_len must be >= 1, got 0$"):
        load_splits(p, min_len=0)
    assert len(load_splits(p, min_len=1).val) == 10


def test_heldout_split_is_load_splits_tail_at_the_runs_val_fraction(corpus_file, tmp_path):
    """``heldout_split`` (what eval and gradflow score) is the same tail ``load_splits`` holds out,
    at the given ``val_fraction`` (0.2 of 50,000 bytes: the last 10,000), and a ``val_data`` file
    is read without opening ``data``, named "val" (``file_split`` alone names a file "eval")."""
    p, data = corpus_file
    val = heldout_split(p, val_fraction=0.2)
    assert (val.offset, len(val), val.name) == (40_000, 10_000, "val")
    np.testing.assert_array_equal(val[:], data[-10_000:])
    v = tmp_path / "val.bin"
    v.write_bytes(b"held out")
    moved = heldout_split(tmp_path / "moved.bin", v)
    assert (moved.path, len(moved), moved.name) == (v, 8, "val")
    assert (file_split(v).name, len(file_split(v))) == ("eval", 8)  # another held-out text: named eval


def test_val_data_file_shorter_than_min_len_is_refused(corpus_file, tmp_path):
    p, _ = corpus_file
    v = tmp_path / "val.bin"
    v.write_bytes(b"x")
    with pytest.raises(ValueError, match=rf"held-out file {v} \(1 byte\) is shorter than min_len = 2 bytes"):
        load_splits(p, val_data=v)
    v.write_bytes(b"xy")
    assert len(load_splits(p, val_data=v).val) == 2


def test_bundled_sample_default():
    tr, va = default_train_path(), default_val_path()
    assert tr.is_file() and tr.stat().st_size > 1_000_000
    assert va.is_file() and va.stat().st_size > 100_000
    s = load_splits()
    assert s.train.path == tr and s.val.path == va
    assert len(s.train) == tr.stat().st_size and len(s.val) == va.stat().st_size
    b = BatchStream(s.train, 4, 256, seed=0).batch(0)
    assert b.shape == (4, 257) and b.dtype == torch.int64 and int(b.max()) < 256
    # a few whole documents: the sample ends at a document boundary
    assert bytes(s.train[-2:]) == b"\n\n" and bytes(s.val[-2:]) == b"\n\n"


def test_bundled_sample_md5_matches_readme():
    readme = (default_train_path().parent / "README.md").read_text()
    for p in (default_train_path(), default_val_path()):
        assert hashlib.md5(p.read_bytes()).hexdigest() in readme


# ---- BatchStream ------------------------------------------------------------------------

def test_sampler_determinism(corpus_file):
    sp = split_of(corpus_file[0])
    a = BatchStream(sp, 8, 64, seed=1)
    b = BatchStream(sp, 8, 64, seed=1)
    c = BatchStream(sp, 8, 64, seed=2)
    for k in (0, 1, 7, 12345):
        assert torch.equal(a.batch(k), b.batch(k))
        assert not torch.equal(a.batch(k), c.batch(k))
    assert not torch.equal(a.batch(0), a.batch(1))


def test_batch_independent_of_call_order(corpus_file):
    sp = split_of(corpus_file[0])
    a = BatchStream(sp, 8, 64, seed=3)
    fwd = [a.batch(k) for k in range(10)]
    b = BatchStream(sp, 8, 64, seed=3)
    rev = {k: b.batch(k) for k in reversed(range(10))}
    b.batch(99)
    for k in range(10):
        assert torch.equal(fwd[k], rev[k]) and torch.equal(fwd[k], b.batch(k))
    # resume: the iterator from step 5 equals batch(5), batch(6)
    it = a.batches(5)
    assert torch.equal(next(it), fwd[5]) and torch.equal(next(it), fwd[6])


def test_rank_sharding_equals_single_process(corpus_file):
    sp = split_of(corpus_file[0])
    B = 4
    one = BatchStream(sp, 2 * B, 32, seed=7)
    r0 = BatchStream(sp, B, 32, seed=7, rank=0, world_size=2)
    r1 = BatchStream(sp, B, 32, seed=7, rank=1, world_size=2)
    for k in range(5):
        assert torch.equal(torch.cat([r0.batch(k), r1.batch(k)]), one.batch(k))
    # 4 ranks x 2 as well
    quads = [BatchStream(sp, 2, 32, seed=7, rank=r, world_size=4) for r in range(4)]
    assert torch.equal(torch.cat([q.batch(3) for q in quads]), one.batch(3))


def _splitmix_offset(seed, step, index, n):
    """The documented hash, in Python integers: mix(mix(mix(seed + G) ^ (step * G)) ^ ((index + 1) * G)) % n."""
    m64, g = (1 << 64) - 1, 0x9E3779B97F4A7C15

    def mix(x):
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & m64
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & m64
        return x ^ (x >> 31)

    return mix(mix(mix((seed + g) & m64) ^ (step * g & m64)) ^ ((index + 1) * g & m64)) % n


def test_sample_offsets_are_the_documented_splitmix_hash():
    """The stream is a pinned function of (seed, step, global index): the docstring's formula,
    index + 1 included, computed here in plain integers (a changed hash silently changes every
    run's training data)."""
    for seed, step in ((0, 0), (42, 7), (2**63 - 1, 123_456)):
        idx = np.arange(6, dtype=np.uint64)
        expect = [_splitmix_offset(seed, step, i, 1_000_003) for i in range(6)]
        assert sample_offsets(seed, step, idx, 1_000_003).tolist() == expect


def test_windows_are_file_slices(corpus_file):
    p, data = corpus_file
    sp = split_of(p)
    bs = BatchStream(sp, 16, 100, seed=5)
    for k in range(5):
        offs = bs.offsets(k)
        b = bs.batch(k).numpy()
        for o, row in zip(offs, b):
            np.testing.assert_array_equal(row, data[o : o + 101])


def test_offsets_cover_range(tmp_path):
    p = tmp_path / "small.bin"
    p.write_bytes(bytes(range(20)))
    bs = BatchStream(split_of(p), 64, 10, seed=0)  # valid starts 0..9
    seen = np.concatenate([bs.offsets(k) for k in range(50)])
    assert seen.min() == 0 and seen.max() == 9 and len(set(seen.tolist())) == 10
    assert BatchStream(split_of(p), 3, 19, seed=0).offsets(0).tolist() == [0, 0, 0]  # exact fit


def test_heldout_bytes_never_sampled(tmp_path):
    n, n_val = 20_000, 2_000
    data = np.zeros(n, dtype=np.uint8)
    data[: n - n_val] = np.arange(n - n_val) % 200  # train bytes < 200
    data[n - n_val :] = 255  # held-out marker
    p = tmp_path / "marked.bin"
    p.write_bytes(data.tobytes())
    s = load_splits(p, val_fraction=n_val / n)
    assert len(s.val) == n_val and bool((s.val[:] == 255).all())
    bs = BatchStream(s.train, 32, 128, seed=11)
    last = 0
    for k in range(500):
        b = bs.batch(k)
        assert int(b.max()) < 255
        last = max(last, int(bs.offsets(k).max()))
    assert last > len(s.train) - 128 - 1 - 50  # windows do reach the end of the train split


def test_heldout_split_from_val_view_offsets(corpus_file):
    p, data = corpus_file
    s = load_splits(p, val_fraction=0.2)
    bs = BatchStream(s.val, 4, 16, seed=0)
    b = bs.batch(0).numpy()
    for o, row in zip(bs.offsets(0), b):
        np.testing.assert_array_equal(row, data[s.val.offset + o : s.val.offset + o + 17])


def test_short_split_error(tmp_path):
    p = tmp_path / "short.txt"
    p.write_bytes(b"x" * 100)
    with pytest.raises(
        ValueError,
        match=rf"^training file {p} \(100 bytes\) is shorter than seq_len\+1 = 101 bytes; "
        r"use a larger file or a smaller --seq-len",
    ):
        BatchStream(split_of(p), 2, 100, seed=0)
    BatchStream(split_of(p), 2, 99, seed=0).batch(0)  # exactly seq_len+1 works


@pytest.mark.parametrize("kw,field", [({"batch_size": 0}, "batch_size"), ({"seq_len": -1}, "seq_len"),
                                      ({"seq_len": 0}, "seq_len")])
def test_positive_args(corpus_file, kw, field):
    args = dict(batch_size=2, seq_len=8, seed=0) | kw
    with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
        BatchStream(split_of(corpus_file[0]), **args)


@pytest.mark.parametrize("field", ["batch_size", "seq_len", "world_size"])
def test_a_bool_is_no_positive_integer(corpus_file, field):
    """``True`` is an int to Python but no batch size, length or world size: refused by name."""
    args = dict(batch_size=2, seq_len=8, seed=0) | {field: True}
    with pytest.raises(ValueError, match=rf"^{field} must be a positive integer, got True$"):
        BatchStream(split_of(corpus_file[0]), **args)


def test_bad_rank(corpus_file):
    with pytest.raises(ValueError, match="rank must be in"):
        BatchStream(split_of(corpus_file[0]), 2, 8, seed=0, rank=2, world_size=2)


def test_negative_step_is_refused(corpus_file):
    bs = BatchStream(split_of(corpus_file[0]), 2, 8, seed=0)
    for step in (-1, -2):
        with pytest.raises(ValueError, match=f"step must be >= 0, got {step}"):
            bs.offsets(step)
    assert bs.offsets(0).shape == (2,)


# ---- eval_windows -----------------------------------------------------------------------

def test_eval_windows_coverage(corpus_file):
    p, data = corpus_file
    s = load_splits(p, val_fraction=0.1)  # 5000 held-out bytes
    T = 64
    wins = list(eval_windows(s.val, T, batch_size=7))
    assert all(w.shape[1] == T + 1 for w in wins) and all(w.shape[0] == 7 for w in wins[:-1])
    allw = torch.cat(wins).numpy()
    n = eval_num_windows(len(s.val), T)
    assert allw.shape[0] == n == (5000 - 1) // T
    val = data[-5000:]
    for i, row in enumerate(allw):
        np.testing.assert_array_equal(row, val[i * T : i * T + T + 1])
    # targets tile [1, 1 + n*T) exactly once; the dropped remainder is < T bytes
    targets = np.concatenate([np.arange(i * T + 1, i * T + T + 1) for i in range(n)])
    np.testing.assert_array_equal(targets, np.arange(1, 1 + n * T))
    assert len(s.val) - (1 + n * T) < T
    # deterministic
    assert all(torch.equal(a, b) for a, b in zip(wins, eval_windows(s.val, T, batch_size=7)))


@pytest.mark.parametrize("n_bytes,windows", [(0, 0), (1, 0), (8, 0), (9, 1), (16, 1), (17, 2)])
def test_eval_num_windows_counts_whole_windows_of_seq_len_targets(n_bytes, windows):
    """``(L - 1) // seq_len`` windows (seq_len 8 here): a window needs seq_len + 1 bytes, the
    next one shares its first byte; never negative, even for no bytes."""
    assert eval_num_windows(n_bytes, 8) == windows


def test_eval_windows_stop_at_the_last_whole_window(tmp_path):
    """16 bytes with seq_len 8: one window (bytes 0..8); the 7 bytes after it make no window, and
    none reads past the split."""
    p = tmp_path / "c.bin"
    p.write_bytes(bytes(range(16)) + b"\xff" * 4)
    s = Split(ByteCorpus(p), 0, 16, "val")
    wins = torch.cat(list(eval_windows(s, 8, 4)))
    assert wins.tolist() == [list(range(9))]


def test_exactly_one_window_of_bytes_is_enough(tmp_path):
    """seq_len + 1 bytes hold one window: a split of exactly that many scores it (and trains on
    it, at offset 0), as does a ``max_bytes`` cap of exactly that many; one byte fewer does not."""
    p = tmp_path / "c.bin"
    p.write_bytes(bytes(range(20)))
    s = Split(ByteCorpus(p), 3, 9, "val")
    assert torch.cat(list(eval_windows(s, 8, 4))).tolist() == [list(range(3, 12))]
    assert BatchStream(s, 2, 8).batch(0).tolist() == [list(range(3, 12))] * 2
    whole = Split(ByteCorpus(p), 0, 20, "val")
    assert torch.cat(list(eval_windows(whole, 8, 4, max_bytes=9))).tolist() == [list(range(9))]
    with pytest.raises(ValueError, match="^--eval-bytes 8 is less than one evaluation window"):
        list(eval_windows(whole, 8, 4, max_bytes=8))

def test_eval_windows_max_bytes_beyond_the_split_is_the_whole_split(corpus_file):
    """A ``max_bytes`` cap larger than the split scores the split, never bytes past its end (the
    train split's windows must not run into the held-out tail)."""
    p, _ = corpus_file
    s = load_splits(p, val_fraction=0.1)
    whole = torch.cat(list(eval_windows(s.train, 64, 8)))
    capped = torch.cat(list(eval_windows(s.train, 64, 8, max_bytes=10 * len(s.train))))
    assert torch.equal(capped, whole) and len(whole) == eval_num_windows(45_000, 64) == 703


def test_eval_windows_max_bytes_and_errors(corpus_file):
    s = load_splits(corpus_file[0], val_fraction=0.1)
    wins = torch.cat(list(eval_windows(s.val, 10, 4, max_bytes=101)))
    assert wins.shape == (10, 11)
    with pytest.raises(ValueError, match=r"^the held-out split of .*corpus.bin \(5,000 bytes\) is shorter than one "
                                         r"evaluation window, seq_len\+1 = 5001 bytes; use a larger file$"):
        list(eval_windows(s.val, 5000, 4))  # the whole split was used
    # capped under one window: the cap is the fix where the split holds one, else the file
    with pytest.raises(ValueError, match=r"^--eval-bytes 3,000 is less than one evaluation window, seq_len\+1 = "
                                         r"4001 bytes; raise it to at least 4001$"):
        list(eval_windows(s.val, 4000, 4, max_bytes=3000))
    with pytest.raises(ValueError, match=r"^held-out file .*corpus.bin \(50,000 bytes\) is shorter"):
        list(eval_windows(file_split(corpus_file[0]), 60_000, 4, max_bytes=100_000))
    with pytest.raises(ValueError, match=r"split of .*corpus.bin \(5,000 bytes\) .* 6001 bytes; use a larger file$"):
        list(eval_windows(s.val, 6000, 4, max_bytes=3000))


@pytest.mark.parametrize("limit, kept", [(14, b"one doc\n\nsix\n\n"), (13, b"one doc\n\n"), (40, None),
                                         (28, None), (5, b"one doc\n\n")])
def test_the_sample_cut_keeps_whole_documents_up_to_the_limit(tmp_path, limit, kept):
    """``make_sample.cut_prefix``: the longest prefix of whole documents of at most ``limit`` bytes,
    a boundary that ends exactly at the limit included (14 here); the whole shard when it fits,
    also when it is exactly the limit (28 bytes); a first document longer than the limit (5) whole,
    with its blank line."""
    import lzma

    from rnnlab.data.make_sample import cut_prefix

    text = b"one doc\n\nsix\n\nthe rest of it"
    shard = tmp_path / "s.txt.xz"
    shard.write_bytes(lzma.compress(text))
    assert cut_prefix(shard, limit) == (kept if kept is not None else text)


def test_make_sample_joins_the_shards_cut_in_sorted_name_order(tmp_path, monkeypatch):
    """``make_sample``: each split is its shards' cut prefixes in sorted file-name order, whatever
    order the file system lists them in (listed here in reverse)."""
    import lzma
    import pathlib

    from rnnlab.data.make_sample import make_sample

    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        for name, text in (("a", b"a1\n\na2\n\n"), ("b", b"b1\n\nb2\n\n")):
            (tmp_path / split / f"{name}.{split}.txt.xz").write_bytes(lzma.compress(text))
    glob = pathlib.Path.glob
    monkeypatch.setattr(pathlib.Path, "glob", lambda self, pattern: reversed(sorted(glob(self, pattern))))
    info = make_sample(tmp_path, tmp_path / "out", train_per_shard=4, val_per_shard=100)
    assert (tmp_path / "out" / "registry_pile_train.txt").read_bytes() == b"a1\n\nb1\n\n"
    assert (tmp_path / "out" / "registry_pile_val.txt").read_bytes() == b"a1\n\na2\n\nb1\n\nb2\n\n"
    assert info["train"]["shards"] == [("a.train.txt.xz", 4), ("b.train.txt.xz", 4)]
    assert info["val"]["md5"] == hashlib.md5(b"a1\n\na2\n\nb1\n\nb2\n\n").hexdigest()


def test_make_sample_interrupted_leaves_the_sample_it_found(tmp_path, monkeypatch):
    """A ``make_sample`` run stopped between shards (Ctrl-C, a bad shard) leaves the sample that was
    there whole, and no temporary file beside it: the package's tests read that file."""
    import lzma

    from rnnlab.data import make_sample as ms

    (tmp_path / "train").mkdir()
    for name in ("a", "b"):
        (tmp_path / "train" / f"{name}.train.txt.xz").write_bytes(lzma.compress(b"x1\n\nx2\n\n"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "registry_pile_train.txt").write_bytes(b"the old sample\n\n")
    cut = ms.cut_prefix

    def stop_at_b(path, limit):
        if path.name.startswith("b"):
            raise KeyboardInterrupt
        return cut(path, limit)

    monkeypatch.setattr(ms, "cut_prefix", stop_at_b)
    with pytest.raises(KeyboardInterrupt):
        ms.make_sample(tmp_path, out)
    assert (out / "registry_pile_train.txt").read_bytes() == b"the old sample\n\n"
    assert sorted(p.name for p in out.iterdir()) == ["registry_pile_train.txt"]
