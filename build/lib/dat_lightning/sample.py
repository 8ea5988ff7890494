"""``python -m dat_lightning.sample``: the command line lives in :mod:`dat_lightning.cli.sample`."""

from dat_lightning.cli.sample import main

if __name__ == "__main__":
    main()
