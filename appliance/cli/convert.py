"""`appliance convert SRC DST`: turn a BERT sentence-transformers folder into an embedding GGUF.

A thin shell over appliance.models.fetch.convert_bert, with the terminal progress bar the fetcher uses.
It works offline and without a daemon, so a model copied onto an edge box by hand can be prepared
there. `register` takes any subparsers object, so the `models` command can mount it too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.progress import TerminalProgress
from appliance.models.fetch.convert_bert import DTYPES, convert_bert


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a BERT sentence-transformers folder to an embedding GGUF",
        description="Convert a BERT-family sentence-transformers folder (config.json,"
        " model.safetensors, vocab.txt) into a GGUF that llama.cpp serves as an embedding model.",
    )
    p.add_argument("src", type=Path, help="folder with config.json, model.safetensors, vocab.txt")
    p.add_argument("dst", type=Path, help="GGUF file to write")
    p.add_argument(
        "--dtype", choices=DTYPES, default="f16", help="type of the 2-D weights (default f16)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bar = TerminalProgress()
    out = convert_bert(args.src, args.dst, dtype=args.dtype, progress=bar.convert_callback)
    bar.finish(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
