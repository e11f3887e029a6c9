"""Real corpora -> one raw byte file that ``rnnlab train --data`` reads (``rnnlab data prepare``).

Sources are files and folders (walked recursively in sorted order, hidden entries skipped). A
file's name says its format:

    NAME.txt, or any other name   plain text: the whole file is one document
    NAME.jsonl                    JSON lines: each line an object whose FIELD (default "text") is one document
    ... + .xz / .gz / .zst / .bz2 compressed with lzma, gzip, Zstandard or bzip2 (the Pile ships 00.jsonl.zst,
                                  Wikipedia its dumps as .bz2)

A folder contributes its files named ``*.txt`` or ``*.jsonl``, compressed or not. A gzip, xz,
Zstandard or bzip2 file not named with its suffix is refused (its compressed bytes are no text), as
is a zip or tar archive, compressed or not (extract its files first), and a file named with one of
those suffixes that its bytes are not (it is named so, not called corrupt). Documents are
written in order with SEPARATOR between them (default a blank line, ``\\n\\n``, as between the
documents of registry-pile's shards); empty documents are skipped, and sources holding no text at
all are refused (an empty corpus would only fail later, in training).

Nothing is held whole: files are read in blocks and a JSON-lines file one line (one document) at
a time. The corpus is written under a temporary name in the output's folder and renamed to FILE
only when complete, so an interrupted prepare leaves nothing under FILE. ``FILE.manifest.json``, in
place just before FILE is, records each source (path, format, size and sha256 of the file as
stored, documents and their bytes, separators not counted) and the corpus's size and sha256. A
corrupt or truncated shard, a line that is not a JSON object, or an object without a string FIELD
stops the run with a ``CorpusError`` naming the file (and line).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import zstandard
from tqdm import tqdm

from rnnlab.data.corpus import (COMPRESSED_MAGIC, MAGIC_BYTES, SUFFIX_OF, TAR_HEAD, ZIP_MAGIC, compression_of,
                                is_tar)
from rnnlab.errors import name_file, naming

# Bytes per read, compressed or not. Decompressing one such read of Zstandard, xz or bzip2 (each
# read through _stream_blocks) yields its compression ratio times more (a few times for text);
# gzip's reader yields at most this much.
READ_SIZE = 1 << 16
FOLDER_FORMATS = (".txt", ".jsonl")  # what a folder contributes (before any compression suffix)


class Bzip2Error(ValueError):
    """Damaged bzip2 data (bz2 raises a plain OSError for it)."""


# What a damaged compressed stream raises (gzip's BadGzipFile is an OSError: caught by name).
CORRUPT = (EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError, Bzip2Error)
# the suffixes that unpack each compressed format (corpus.SUFFIX_OF): a file named with one of them
# is read through its decompressor
COMPRESSIONS = tuple(SUFFIX_OF.values())
KIND_OF = {suffix: kind for kind, suffix in SUFFIX_OF.items()}  # ".gz" -> "gzip"
# how a file named with each suffix starts: its format's magic (bzip2's "BZh" and block size 1-9 before a
# block's or an empty stream's end's magic), or, for Zstandard, a skippable frame's (pzstd writes one first)
STREAM_STARTS = {SUFFIX_OF[kind]: (magic,) for magic, kind in COMPRESSED_MAGIC.items()}
STREAM_STARTS[".bz2"] = tuple(b"BZh%d" % n for n in range(1, 10))
STREAM_STARTS[".zst"] += tuple(bytes([0x50 + n]) + b"\x2a\x4d\x18" for n in range(16))
# The largest window Zstandard allows (2 GiB): a frame written with `zstd --long=31` needs it, and the
# decoder's default limit (128 MiB, as the zstd command's without --long=31) refuses such valid shards
ZSTD_MAX_WINDOW = 1 << 31


class CorpusError(ValueError):
    """A source that cannot be read as its name says (one line, naming the file)."""


@dataclass(frozen=True)
class Source:
    path: Path
    compression: str | None  # one of COMPRESSIONS, or None
    jsonl: bool

    @classmethod
    def from_path(cls, path: Path) -> "Source":
        compression = path.suffix if path.suffix in COMPRESSIONS else None
        return cls(path, compression, _uncompressed_name(path).endswith(".jsonl"))

    @property
    def format(self) -> str:
        return ("jsonl" if self.jsonl else "text") + (self.compression or "")


def find_sources(paths: Sequence[str | os.PathLike]) -> list[Source]:
    """Files as given, folders expanded to their ``FOLDER_FORMATS`` files in sorted order."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _in_folder_format(f, p))
            if not found:
                raise FileNotFoundError(f"{p} holds no *.txt or *.jsonl files (optionally .xz/.gz/.zst/.bz2)")
            files += found
        elif p.is_file():
            files.append(p)
        elif p.exists():  # a pipe (<(zcat ...)) or a device: not "not found"
            raise ValueError(f"source {p} is not a regular file or a folder (a pipe or a device?): write its bytes "
                             f"to a file first")
        else:
            raise FileNotFoundError(f"source not found: {p}")
    seen = set()
    for f in files:
        if f.resolve() in seen:
            raise ValueError(f"source {f} is given twice")
        seen.add(f.resolve())
    return [Source.from_path(f) for f in files]


def _in_folder_format(f: Path, folder: Path) -> bool:
    if any(part.startswith(".") for part in f.relative_to(folder).parts):
        return False
    return _uncompressed_name(f).endswith(FOLDER_FORMATS)


def _uncompressed_name(path: Path) -> str:
    """``path``'s name without its compression suffix, which names the format: ``00.jsonl.zst`` -> ``00.jsonl``."""
    return path.name[: -len(path.suffix)] if path.suffix in COMPRESSIONS else path.name


SEPARATOR_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "0": b"\0", "\\": b"\\"}  # and \xNN: one byte
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|0(?![0-7])|[nrt\\])?")  # no group: an escape not accepted


def parse_separator(text: str) -> bytes:
    r"""The separator as typed on a command line, with backslash escapes ``\n``, ``\r``, ``\t``,
    ``\0``, ``\xNN`` (one byte) and ``\\`` (a backslash); other characters stand for their UTF-8
    bytes, and bytes the shell passed that are no UTF-8 (``$'\xff'``, decoded by Python with
    surrogateescape) for themselves. Any other escape (``\q``, ``\u2028``, octal ``\012``) is refused
    rather than written literally."""
    out, pos = bytearray(), 0
    for m in _ESCAPE.finditer(text):
        out += text[pos:m.start()].encode("utf-8", "surrogateescape")
        esc = m.group(1)
        if esc is None:
            bad = re.match(r"\\(?:[0-7]+|.)?", text[m.start():], re.S).group()  # \q, \012, a final \
            bad = bad if bad.isprintable() else ascii(bad)
            raise ValueError(f"separator: unknown escape {bad}; the escapes are \\n \\r \\t \\0 \\xNN "
                             f"and \\\\ (a backslash)")
        out += bytes([int(esc[1:], 16)]) if esc.startswith("x") else SEPARATOR_ESCAPES[esc]
        pos = m.end()
    return bytes(out + text[pos:].encode("utf-8", "surrogateescape"))


def prepare(paths: Sequence[str | os.PathLike], out: str | os.PathLike, field: str = "text",
            separator: bytes = b"\n\n", progress: bool = True) -> dict:
    """Write the documents of ``paths`` to ``out`` and ``out.manifest.json``; returns the manifest.
    ``progress``: a bar on stderr when it is a terminal."""
    out = Path(out)
    sources = find_sources(paths)
    for source in sources:
        _refuse_unnamed_compression(source)
        _refuse_empty_compressed(source)
    if out.exists():
        raise ValueError(f"--out {out} already exists; remove it or choose another name")
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # the deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    total = sum(s.path.stat().st_size for s in sources)
    try:
        with AtomicFile(out) as f, tqdm(total=total, unit="B", unit_scale=True, desc=f"prepare {out.name}",
                                         disable=None if progress else True) as bar:  # None: on a terminal only
            corpus = _Corpus(f, separator)
            entries = [_write_source(s, corpus, field, bar) for s in sources]
            if not corpus.documents:  # raised inside the block: the temporary file is deleted, nothing renamed
                files = "the source file" if len(sources) == 1 else f"the {len(sources)} source files"
                raise ValueError(f"no text in {files} (every document is empty); {out} not written")
            manifest = {"file": out.name, "bytes": corpus.bytes, "sha256": corpus.sha256.hexdigest(),
                        "documents": corpus.documents, "separator": separator.decode("latin-1"),
                        "field": field, "sources": entries}
            # in place before the corpus is renamed to FILE, so that FILE never stands without it
            with AtomicFile(manifest_path(out)) as m:
                m.write((json.dumps(manifest, indent=1) + "\n").encode())
    except BaseException:  # nothing written: nor the manifest, nor the folders made for it
        if not out.exists():
            with contextlib.suppress(OSError):
                manifest_path(out).unlink()
        for d in made:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return manifest


def _refuse_unnamed_compression(source: Source) -> None:
    """A compressed file whose name lacks its suffix would be copied as text, its compressed bytes
    into the corpus (and `rnnlab train` would send the user back here): refuse it, naming the suffix.
    A file named with a suffix whose stream it does not start (a ``.gz`` saved unpacked by a download
    tool, an xz file named ``.zst``) is refused saying so, where its decoder would call it corrupt."""
    with open(source.path, "rb") as f:
        head = f.read(MAGIC_BYTES)
    if head.startswith(ZIP_MAGIC):
        raise CorpusError(f"{source.path} is a zip archive, which prepare does not open: extract its files and "
                          f"give them instead")
    kind = compression_of(head)
    if source.compression is None:
        if kind is not None:
            raise CorpusError(f"{source.path} is {kind}-compressed, but its name does not end in {SUFFIX_OF[kind]}, "
                              f"which is what makes prepare unpack it: rename it (its compressed bytes would be "
                              f"written as text)")
        return
    named = KIND_OF[source.compression]
    if kind is not None and kind != named:
        raise CorpusError(f"{source.path} is {kind}-compressed, but its name ends in {source.compression}, which "
                          f"is what makes prepare unpack {named}: rename it to end in {SUFFIX_OF[kind]}")
    # a head shorter than the stream's start (a truncated file) is left to the decoder, which says so
    if not any(head.startswith(start) or start.startswith(head) for start in STREAM_STARTS[source.compression]):
        raise CorpusError(f"{source.path} is not {named}-compressed (it starts {head[:8]!r}), though its name ends "
                          f"in {source.compression}: if it is uncompressed, remove {source.compression} from its name")


def _refuse_empty_compressed(source: Source) -> None:
    """An empty ``.gz`` or ``.zst`` file (a download that failed) holds no compressed stream, yet gzip and
    zstandard read it as no text, as if it were an empty shard: refuse it, as lzma does an empty ``.xz``."""
    if source.compression is not None and source.path.stat().st_size == 0:
        raise CorpusError(f"{source.path}: corrupt or truncated {source.format} file (it is empty, no "
                          f"{source.compression} stream)")


def manifest_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".manifest.json")


def _write_source(source: Source, corpus: "_Corpus", field: str, bar: tqdm) -> dict:
    """Append one source's documents to the corpus; its manifest entry."""
    docs = bytes_out = 0
    with open(source.path, "rb") as f:
        raw = _HashingReader(f, bar)
        blocks = _refuse_tar(_decompressed_blocks(raw, source.compression), source)
        # each document as write_document's pieces: a JSON line's text is one piece; a text file is
        # one document whose pieces are its blocks, so it is never held whole
        documents = ((text,) for text in _jsonl_texts(blocks, field, source.path)) if source.jsonl else [blocks]
        try:  # the generators decompress lazily: a damaged stream raises here, as documents are written
            for doc in documents:
                n = corpus.write_document(doc)
                docs, bytes_out = docs + (n > 0), bytes_out + n
        except CORRUPT as e:
            raise CorpusError(f"{source.path}: corrupt or truncated {source.format} file ({e})") from None
        while raw.read(READ_SIZE):  # the sha256 covers the whole file, whatever a decoder left unread
            pass
    return {"path": str(source.path), "format": source.format, "size": raw.size,
            "sha256": raw.sha256.hexdigest(), "documents": docs, "bytes": bytes_out}


def _decompressed_blocks(raw: io.RawIOBase, compression: str | None) -> Iterator[bytes]:
    if compression == ".zst":
        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        yield from _stream_blocks(raw, dctx.decompressobj, "Zstandard frame")
    elif compression == ".xz":
        yield from _stream_blocks(raw, lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ), "xz stream", padding=b"\0")
    elif compression == ".bz2":  # pbzip2 and lbzip2 write several streams, as `zstd -T` writes frames
        yield from _stream_blocks(raw, _Bzip2Decoder, "bzip2 stream")
    else:
        stream = gzip.GzipFile(fileobj=raw) if compression == ".gz" else raw
        while block := stream.read(READ_SIZE):
            yield block


def _refuse_tar(blocks: Iterable[bytes], source: Source) -> Iterator[bytes]:
    """``blocks``, unless they are a tar archive (``shards.tar.gz``, ``openwebtext.tar.xz``), whose
    headers and padding would be written as text, and a compressed member's bytes with them: refused
    as a zip archive is, before its first byte is written."""
    blocks, head = iter(blocks), b""
    for block in blocks:
        head += block
        if len(head) >= TAR_HEAD:
            break
    if is_tar(head):
        packed = f" ({KIND_OF[source.compression]}-compressed)" if source.compression else ""
        raise CorpusError(f"{source.path} is a tar archive{packed}, which prepare does not open: extract its "
                          f"files and give them instead")
    if head:
        yield head
    yield from blocks


class _Bzip2Decoder:
    """bz2's decoder (a type that cannot be subclassed), raising its error for damaged data (a plain
    OSError, "Invalid data stream") as a ``Bzip2Error``, one of CORRUPT: a disk's OSError is no damaged file."""

    def __init__(self) -> None:
        self._decoder = bz2.BZ2Decompressor()

    eof = property(lambda self: self._decoder.eof)
    unused_data = property(lambda self: self._decoder.unused_data)

    def decompress(self, data: bytes) -> bytes:
        try:
            return self._decoder.decompress(data)
        except OSError as e:
            raise Bzip2Error(str(e)) from None


def _stream_blocks(raw: io.RawIOBase, new_decoder: Callable[[], Any], name: str,
                   padding: bytes = b"") -> Iterator[bytes]:
    """The streams of a file (Zstandard frames, xz streams) one after another, to its end.
    zstandard's and lzma's own readers end quietly inside a truncated stream (zstandard) or at
    bytes after a stream that start no other (lzma: a damaged second stream, appended junk); here
    the first raises EOFError and the second the decoder's error. ``padding``: bytes allowed
    between streams (xz's stream padding, NUL bytes)."""
    decoder, inside = new_decoder(), False
    while data := raw.read(READ_SIZE):
        while data := (data if inside else data.lstrip(padding)):
            block, inside = decoder.decompress(data), True
            if block:
                yield block
            if not decoder.eof:
                break
            data, decoder, inside = decoder.unused_data, new_decoder(), False
    if inside:
        raise EOFError(f"the data ends inside a {name}")


def _lines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a byte stream, without their ``\\n``, holding one line at a time."""
    buf = bytearray()
    for block in blocks:
        start, scan = 0, len(buf)
        buf += block
        while (end := buf.find(b"\n", scan)) >= 0:
            yield bytes(buf[start:end])
            start = scan = end + 1
        del buf[:start]
    if buf:
        yield bytes(buf)


# a surrogate code point left alone in a decoded JSON string (json.loads joins each valid pair into one
# character, so any surrogate still there is lone)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8, each lone surrogate (which UTF-8 cannot hold) as one U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


def _jsonl_texts(blocks: Iterable[bytes], field: str, path: Path) -> Iterator[bytes]:
    """Each non-blank line's ``field`` as UTF-8 (lone surrogates, which UTF-8 cannot hold, as U+FFFD)."""
    for lineno, line in enumerate(_lines(blocks), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise CorpusError(f"{path}: line {lineno} is not valid JSON ({e})") from None
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            if not isinstance(record, dict):
                raise CorpusError(f"{path}: line {lineno} is not a JSON object ({type(record).__name__}), so it has "
                                  f"no field {field!r}")
            if field in record:  # there, but a number, a list, null: not text to copy
                raise CorpusError(f"{path}: line {lineno}'s field {field!r} is {_short(text)}, not a string")
            fields = ", ".join(map(repr, list(record)[:8])) + (", ..." if len(record) > 8 else "")
            raise CorpusError(f"{path}: line {lineno} has no field {field!r} (its fields: {fields or 'none'}; "
                              f"choose one with --field)")
        yield _utf8(text)


def _short(value) -> str:
    """A JSON value for a one-line message, cut to 40 characters."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


class _HashingReader(io.RawIOBase):
    """A source file as read by its decoder, hashed and counted on the way (and shown on the bar)."""

    def __init__(self, f, bar: tqdm):
        self.f, self.bar, self.sha256, self.size = f, bar, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        with naming(self.f.name):  # a read error is the source's, not the output's (AtomicFile names the rest)
            n = self.f.readinto(b)
        if n:
            self.sha256.update(memoryview(b)[:n])
            self.size += n
            self.bar.update(n)
        return n


class _Corpus:
    """The output being written: documents joined by the separator, counted and hashed."""

    def __init__(self, f, separator: bytes):
        self.f, self.separator = f, separator
        self.sha256, self.bytes, self.documents = hashlib.sha256(), 0, 0

    def write_document(self, pieces: Iterable[bytes]) -> int:
        """One document given as consecutive pieces; returns its bytes (0: empty, not written)."""
        n = 0
        for piece in pieces:
            if not piece:
                continue
            if n == 0 and self.documents:
                self._write(self.separator)
            self._write(piece)
            n += len(piece)
        self.documents += n > 0
        return n

    def _write(self, data: bytes) -> None:
        self.f.write(data)
        self.sha256.update(data)
        self.bytes += len(data)


class AtomicFile:
    """``with AtomicFile(path) as f``: writes go to a temporary file in ``path``'s folder, put on the
    disk (fsync) and renamed to ``path`` when the block ends normally, deleted when it raises (or is
    interrupted). An OS error that names no file (a full disk's write) is given ``path``'s name."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        # a name private to this process, created with the mode any new file gets under the umask
        # (mkstemp's would be owner-only: the corpus is for whoever the umask lets read it)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.part")
        self.f = os.fdopen(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), "wb")
        return self.f

    def __exit__(self, exc_type, exc, tb) -> None:
        name_file(exc, self.path)  # the block's write
        try:
            with naming(self.path), self.f:  # closing flushes what is buffered: a full disk fails here too
                if exc_type is None:  # on the disk before it has the name: a power loss leaves no half file
                    self.f.flush()
                    os.fsync(self.f.fileno())
            if exc_type is None:
                os.replace(self.tmp, self.path)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        if exc_type is not None:
            os.unlink(self.tmp)
