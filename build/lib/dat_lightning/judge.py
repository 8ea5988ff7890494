"""``python -m dat_lightning.judge``: the command line lives in :mod:`dat_lightning.cli.judge`."""

from dat_lightning.cli.judge import main

if __name__ == "__main__":
    main()
