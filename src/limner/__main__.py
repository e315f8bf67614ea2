"""``python -m limner``: the same entry point as the ``limner`` console script."""

from limner.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
