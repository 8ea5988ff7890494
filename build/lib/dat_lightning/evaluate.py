"""``python -m dat_lightning.evaluate``: the command line lives in :mod:`dat_lightning.cli.evaluate`."""

from dat_lightning.cli.evaluate import main

if __name__ == "__main__":
    main()
