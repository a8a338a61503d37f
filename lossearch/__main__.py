"""The `lossearch` command, also `python -m lossearch`.

An `eval` that runs candidate code waits first for the sandbox's zygote, which spends most of a
second importing torch before it takes a job. So the zygote is started here, before the CLI's
own imports (typer, rich, click) and its parsing of the command line, 0.1 s of the wait, and
handed to the command; any other command starts nothing here.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence


def main() -> None:
    """The console script: start what `sys.argv` will need, then run the CLI."""
    sandbox = early_sandbox(sys.argv[1:])
    from lossearch.cli import entry

    entry(sandbox)


def early_sandbox(args: Sequence[str]):
    """A started `Sandbox` when `args` are an `eval` that runs code (a tier above `static`), else None.

    A guess from the raw arguments: when it is wrong the command ignores the sandbox, which is
    closed at exit like its own.
    """
    if not args or args[0] != "eval" or any(arg in ("--help", "-h") for arg in args):
        return None
    if tier_argument(args[1:]) == "static":
        return None
    from lossearch.sandbox import Sandbox

    return Sandbox().start()


def tier_argument(args: Sequence[str]) -> Optional[str]:
    """The value given to `--tier`, in either of its spellings, or None."""
    for index, arg in enumerate(args):
        if arg == "--tier" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--tier="):
            return arg.split("=", 1)[1]
    return None


if __name__ == "__main__":
    main()
