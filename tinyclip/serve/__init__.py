"""``python -m tinyclip.serve``: a local search page over a trained run.

    python -m tinyclip.serve --run runs/demo
    python -m tinyclip.serve --run runs/roco --data roco --data-dir ../shared/data/roco/data/test/radiology

It loads the run's checkpoint and the pairs to search (``collection.py``), embeds them once (cached in
``RUN_DIR/serve/``), then serves one page on the loopback address (``server.py``): type words and see
the images they match, click an image and see its captions, upload an image and see its modality
(``engine.py`` answers each question). Bad input on the command line is one line on stderr and exit
status 2 (a bad flag) or 1 (no such run, missing data, a port in use).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import backend
from ..cli import OneLineParser, nonnegative_int, one_line_warnings, positive_float, positive_int
from ..io import read_json

PROG = "python -m tinyclip.serve"


def port_number(text: str) -> int:
    value = nonnegative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Serve a search page over a trained tinyclip run: text → images, "
                      "image → captions, and the zero-shot modality of an uploaded image. Prints the URL.")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory written by tinyclip.train")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint (default: best)")
    d = p.add_argument_group("the collection to search (default: every pair of the run's own data)")
    d.add_argument("--data", choices=("synthetic", "roco"), help="data source (default: the run's)")
    d.add_argument("--data-dir", metavar="DIR", help="ROCO folder (captions.txt, cuis.txt, images/)")
    d.add_argument("--num-samples", type=positive_int, help="synthetic pairs (default: the run's)")
    d.add_argument("--split", choices=("all", "test"), default="all",
                   help="all pairs (default), or only the test part of the run's split (the run's own data)")
    d.add_argument("--cache-dir", help="decoded-image cache (default: $TINYCLIP_CACHE or ~/.cache/tinyclip)")
    d.add_argument("--prompts", metavar="FILE", help="modality prompt sets {set: {class: [prompts]}} "
                   "(default: tinyclip/prompts/modality.json)")
    s = p.add_argument_group("serving")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=port_number, default=8000, help="port (default: 8000; 0: any free port)")
    s.add_argument("--max-upload-mb", type=positive_float, default=10.0, help="largest upload (default: 10 MB)")
    s.add_argument("--device", choices=backend.DEVICES, default=os.environ.get("TINYCLIP_DEVICE", "auto").lower(),
                   help="cpu (NumPy) or cuda (CuPy); the default comes from $TINYCLIP_DEVICE")
    s.add_argument("--batch-size", type=positive_int, default=128, help="images/captions embedded at once")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run_facts(run_dir: Path, checkpoint: str, state: dict, collection) -> dict:
    """The header of the page: the data, the epoch and its validation loss, retrieval R@10 if evaluated."""
    history = state.get("history") or []
    epoch = state.get("epoch")
    row = next((h for h in history if h.get("epoch") == epoch), {})
    facts = {"run": str(run_dir), "checkpoint": checkpoint, "epoch": epoch, "val_loss": row.get("val_loss"),
             "best_val_loss": state.get("best_val_loss"), "data": collection.description,
             "image_size": int(state["config"]["image_size"]), "retrieval": None}
    try:
        retrieval = read_json(run_dir / "eval" / "metrics.json", "metrics file").get("retrieval")
    except (OSError, ValueError, AttributeError):
        retrieval = None  # not evaluated (or an unreadable file): the header says so
    if isinstance(retrieval, dict):
        facts["retrieval"] = {k: retrieval.get(k) for k in ("i2t_R@10", "t2i_R@10", "n", "split", "checkpoint",
                                                            "epoch")}
    return facts


def start(args, log=print):
    """Load the run and the collection, embed it, and bind the server: ``(server, url)``."""
    from ..models import CLIP
    from .collection import cache_key, embed_collection, load_collection
    from .engine import SearchEngine
    from .server import make_server

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    checkpoint_file = run_dir / f"{args.checkpoint}.npz"
    if not checkpoint_file.is_file():
        raise FileNotFoundError(f"no '{args.checkpoint}' checkpoint in {run_dir} (expected {checkpoint_file.name} "
                                f"from tinyclip.train)")
    if args.prompts and not Path(args.prompts).is_file():
        raise FileNotFoundError(f"--prompts: {args.prompts} does not exist")
    backend.set_default_device(args.device)
    model, state = CLIP.from_checkpoint(run_dir, args.checkpoint)
    collection = load_collection(state, args.data, args.data_dir, args.num_samples, args.split, args.cache_dir,
                                 progress=not args.no_progress)
    cache_file = run_dir / "serve" / f"embeddings-{args.checkpoint}-{cache_key(checkpoint_file, collection)}.npz"
    embed_collection(model, collection, cache_file, args.batch_size, progress=not args.no_progress, log=log)
    engine = SearchEngine(model, collection, run_facts(run_dir, args.checkpoint, state, collection),
                          prompts_file=args.prompts, max_upload_bytes=int(args.max_upload_mb * 2**20))
    try:
        server = make_server(engine, args.host, args.port)
    except OSError as e:
        raise OSError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    log(f"{PROG}: {run_dir} ({args.checkpoint} checkpoint, epoch {state.get('epoch')}); "
        f"{len(collection)} pairs: {collection.description}")
    return server, f"http://{host}:{port}/"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda text: print(text, flush=True)  # noqa: E731  (a reader of stdout waits for the URL line)
    try:
        with one_line_warnings():
            server, url = start(args, log)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, KeyError, RuntimeError, OSError, ImportError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 1
    log(f"open {url} in a browser (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log(f"{PROG}: stopped")
    finally:
        server.server_close()
    return 0
