"""The ``deepfake-detector`` command: one subcommand per pipeline stage.

Each subcommand lives in ``deepfake_detector.commands.<name>`` and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Those modules import heavy libraries (torch,
OpenCV) inside ``run`` so ``--help`` stays fast. User mistakes raise ``UserError`` and become one
``error:`` line with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Optional

from . import __version__
from .errors import DISK_FULL_ERRNOS, WRITE_STOP_ERRNOS, UserError
from .utils import setup_logging

# name -> module (order = order in --help)
COMMANDS = {
    "preprocess": "deepfake_detector.commands.preprocess",
    "train": "deepfake_detector.commands.train",
    "evaluate": "deepfake_detector.commands.evaluate",
    "calibrate": "deepfake_detector.commands.calibrate",
    "predict": "deepfake_detector.commands.predict",
    "serve": "deepfake_detector.commands.serve",
    "export": "deepfake_detector.commands.export",
    "demo": "deepfake_detector.commands.demo",
    "make-demo-data": "deepfake_detector.commands.make_demo_data",
}

log = logging.getLogger("deepfake_detector")

# Environment problems a user fixes (disk full, read-only or forbidden output folder): one clear line.
_SPACE_HINT = "free some space or choose another output folder; finished work is kept and a rerun resumes"
_PERM_HINT = "check the permissions, or choose another output folder"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfake-detector",
        description="Detect deepfake videos: sampled face crops -> CNN per frame -> LSTM -> REAL/FAKE.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:  # a stage not built yet in this checkout
            if exc.name != modname:
                raise
            continue
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=HelpFormatter)
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="more log output (-vv for debug)")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _one_line(message: str) -> str:
    """A user error raised in a DataLoader worker comes back with the worker's traceback folded into its
    message ("Caught UserError in DataLoader worker process 1. Original Traceback ..."): keep what the
    error itself said."""
    if "Original Traceback" not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    return last.split("Error: ", 1)[1] if "Error: " in last else last


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` only where it says something true and new: not for options defaulting to
    None ("not given"; their help states the real default), not for on/off flags (``--no-amp``'s stored
    True is not its default behaviour), not where the help text already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or action.nargs == 0 or "default" in text:
            return text
        return super()._get_help_string(action)


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in WRITE_STOP_ERRNOS:
            raise
        where = f": {os.fsdecode(exc.filename)}" if exc.filename else ""
        hint = _SPACE_HINT if exc.errno in DISK_FULL_ERRNOS else _PERM_HINT
        print(f"error: {exc.strerror or exc}{where} ({hint})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
