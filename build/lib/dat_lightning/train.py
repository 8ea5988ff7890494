"""``python -m dat_lightning.train``: the command line lives in :mod:`dat_lightning.cli.train`."""

from dat_lightning.cli.train import main

if __name__ == "__main__":
    main()
