"""``python -m vision.cli``: the same app as the ``vision-quant`` console script."""

from vision.cli import main

if __name__ == "__main__":
    main()
