"""Other hybrid discriminative-generative methods on DAT's backbone, data and evaluation
(issue 19): their losses as small functions, like :mod:`dat_lightning.losses` for DAT."""
