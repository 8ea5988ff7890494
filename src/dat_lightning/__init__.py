"""dat-lightning: Dual Adversarial Training with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"

__all__ = ["load_classifier"]


def __getattr__(name: str):
    # Lazy, so that `import dat_lightning` stays light (no torch / Hydra until needed).
    if name == "load_classifier":
        from dat_lightning.loading import load_classifier

        return load_classifier
    raise AttributeError(f"module 'dat_lightning' has no attribute {name!r}")
