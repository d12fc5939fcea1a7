"""The `kvpager` command line: thin Typer commands over library calls."""

from __future__ import annotations


def main() -> None:
    """Console-script entry point; explains the missing extra instead of a traceback."""
    from kvpager.cli.console import widen_help_when_piped

    widen_help_when_piped()
    try:
        from kvpager.cli.app import app
    except ImportError as exc:  # typer / rich are in the `sim` extra
        import sys

        print(f"kvpager: the command line needs the 'sim' extra ({exc}); "
              "install it with: pip install 'kvpager[sim]'", file=sys.stderr)
        raise SystemExit(1) from None
    app()
