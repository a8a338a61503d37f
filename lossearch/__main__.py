"""The `lossearch` command, also `python -m lossearch`."""

from __future__ import annotations


def main() -> None:
    """The console script."""
    from lossearch.cli import entry

    entry()


if __name__ == "__main__":
    main()
