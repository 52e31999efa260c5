"""`paddle-lane [--debug] VERB ...`: the command line behind run.sh. Each verb is a small
function that parses its arguments and calls one module; the verbs live in groups
(train_verbs, infer_verbs, score_verbs, serve_verbs), each adding its own parsers. User errors
(ValueError, including ConfigError and UserError, and OSError such as a missing file) print one
line and exit 2;
any other exception is an internal error: traceback, one summary line, exit 1.
--debug (or PADDLE_LANE_DEBUG=1) shows the traceback of user errors too."""
from __future__ import annotations

import signal
import sys

# SIGTERM is held from the first moment: the threads that later imports start (OpenBLAS, OpenCV,
# Paddle) inherit the block, so only the main thread takes a SIGTERM, and only once a Python
# handler is in place (Paddle installs a C-level one when imported). main() releases it.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

import argparse
import os
import traceback
import warnings

# Paddle warns at import that ccache is missing; it only matters when compiling extensions.
warnings.filterwarnings("ignore", message="No ccache found")
# Paddle's executor logs an INFO line per static graph it runs; warnings and errors still show
os.environ.setdefault("GLOG_minloglevel", "2")

from paddle_lane.cli import infer_verbs, score_verbs, serve_verbs, train_verbs

EPILOG = "Run `paddle-lane VERB --help` for a verb's options."
VERB_GROUPS = (train_verbs, infer_verbs, score_verbs, serve_verbs)  # each module's PARSERS add its verbs


# Old spellings that still work, each with a one-line note: verb -> {old flag: new flag}, old verb -> new verb.
RENAMED_FLAGS = {
    **dict.fromkeys(("infer", "video", "export"), {"--checkpoint": "--model"}),
    **dict.fromkeys(("evaluate", "report", "compare"), {"--workers": "--threads"}),
}
RENAMED_VERBS = {"validate": "check-submission"}


def renamed_notes(argv: list[str]) -> list[str]:
    """One note per old verb or flag spelling the command line uses."""
    words = [w.split("=", 1)[0] for w in argv]
    verb = next((w for w in words if not w.startswith("-")), "")
    notes = [f"note: `{verb}` is now `{RENAMED_VERBS[verb]}` (the old name still works)"] if verb in RENAMED_VERBS else []
    renamed = RENAMED_FLAGS.get(verb, {})
    notes += [f"note: {w} is now {renamed[w]} (the old name still works)" for w in dict.fromkeys(words) if w in renamed]
    return notes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paddle-lane", description=__doc__, epilog=EPILOG)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of every error (also PADDLE_LANE_DEBUG=1)")
    sub = parser.add_subparsers(dest="verb", required=True)
    for group in VERB_GROUPS:
        for add_parser in group.PARSERS:
            add_parser(sub)
    return parser


def debug_requested(args) -> bool:
    """--debug on the command line, or PADDLE_LANE_DEBUG set to anything but '' / '0'."""
    return args.debug or os.environ.get("PADDLE_LANE_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("PADDLE_LANE_LAUNCHED") and os.environ.get("PADDLE_TRAINER_ID") is not None:
        from paddle_lane.core.procs import die_with_parent
        die_with_parent()  # a rank dies with paddle.distributed.launch, however that ends
    args = build_parser().parse_args(argv)
    for note in renamed_notes(argv):
        print(note, file=sys.stderr)
    debug = debug_requested(args)
    if args.verb != "train":  # only training turns SIGTERM into a checkpoint; elsewhere it ends the process
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:
        return args.func(args, argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        # user mistakes: config values (ConfigError), UserError, the plain ValueErrors the modules
        # raise on bad input, and files that are missing or cannot be written
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: the traceback is what a report needs
        traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc} (please report it with the traceback above; "
              "--debug also shows tracebacks for one-line errors)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
