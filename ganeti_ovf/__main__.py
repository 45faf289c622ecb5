"""Entry point: `python3 -m ganeti_ovf` and the installed `gnt-ovf`."""

import sys


def main() -> int:
    import ganeti_ovf  # noqa: F401  (puts Ganeti's library on sys.path)

    try:
        import ganeti  # noqa: F401
    except ImportError:
        sys.stderr.write("Failure: Ganeti's Python library was not found (looked in"
                         " %s); install the ganeti package\n"
                         % ", ".join(ganeti_ovf.GANETI_LIBRARY_DIRS))
        return 1
    from ganeti_ovf.cli import Main

    # Ganeti's usage and log lines name the program by argv[0].
    sys.argv[0] = "gnt-ovf"
    return Main()


if __name__ == "__main__":
    sys.exit(main())
