"""``rnnlab data prepare``: real corpora (text, JSON lines; xz, gzip, Zstandard, bzip2) -> one raw byte
file for ``rnnlab train --data`` (``rnnlab.data.prepare``).

    rnnlab data prepare pile/train/00.jsonl.zst pile/train/01.jsonl.zst --out pile.txt
    rnnlab data prepare shards/ --out corpus.txt --separator '\\0'
"""

from __future__ import annotations

import sys

from rnnlab.errors import counted
from rnnlab.options import path_arg


def register(sub) -> None:
    p = sub.add_parser("data", help="prepare corpora for training",
                       description="Corpus tools; `rnnlab data prepare --help` for the one there is.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    q = data_sub.add_parser(
        "prepare", help="stream .txt / .jsonl files and folders (optionally .xz/.gz/.zst/.bz2) into one raw byte file",
        description="Stream text and JSON-lines files and folders (optionally .xz/.gz/.zst/.bz2 compressed) into "
                    "one raw byte file plus FILE.manifest.json (sources, byte counts, sha256). A text file is "
                    "one document, a JSON line is one document (its --field); documents are joined by "
                    "--separator.")
    q.add_argument("sources", nargs="+", type=path_arg, metavar="SRC", help="files and folders, in order")
    q.add_argument("--out", required=True, type=path_arg, metavar="FILE", help="the corpus to write (must not exist)")
    q.add_argument("--field", default="text", help="the JSON-lines field holding the text (default: text)")
    q.add_argument("--separator", default=r"\n\n",
                   help=r"written between documents; escapes \n \r \t \0 \xNN and \\ (a backslash), no others "
                        r"(default: \n\n, a blank line)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=run_prepare, command="data prepare")


def run_prepare(args) -> int:
    from rnnlab.data.prepare import parse_separator, prepare

    try:
        m = prepare(args.sources, args.out, field=args.field, separator=parse_separator(args.separator),
                    progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"rnnlab data prepare: interrupted; no partial file is left under {args.out}", file=sys.stderr)
        return 130
    print(f"wrote {args.out}: {counted(m['bytes'], 'byte')}, {counted(m['documents'], 'document')} from "
          f"{counted(len(m['sources']), 'source file')}; manifest {args.out}.manifest.json")
    return 0
