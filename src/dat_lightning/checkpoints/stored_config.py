"""A checkpoint's stored config is data: what it may build, and nothing else.

A training checkpoint carries the resolved experiment config (``dat_config``), so that ``sample``,
``evaluate`` and :func:`~dat_lightning.load_classifier` can rebuild its classifier, data and seed
source. A file can be crafted, though, and it still passes ``torch.load(weights_only=True)``: a
``_target_`` in it could name any importable callable (``builtins.open``, ``shutil.copyfile``,
``torch.load`` of a second file with ``weights_only=False`` ...) and ``hydra.utils.instantiate``
would call it. So no config that came with a file is instantiated as it is:

- the network is rebuilt by :func:`build_network` from a model name timm knows and plain values
  of checked types, passed to :func:`~dat_lightning.models.build_classifier` directly;
- data nodes (datamodule, datasets, seed sources, transforms) may name only this package's own
  builders (:func:`data_builders`), with plain values (:func:`build_data`);
- a stored config holds no interpolation (``${...}``: it was resolved when written) and asks for
  no download: a checkpoint may not make the user's machine fetch anything.

Anything else is refused with a :class:`~dat_lightning.checkpoints.CheckpointError` naming the
key and the target. Experiment configs given as a file or a mapping (``config=``) follow the same
rules, interpolations allowed (a run's ``.hydra/config.yaml`` has them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from dat_lightning.checkpoints.reading import CheckpointError

_PLAIN = (bool, int, float, str, type(None))

# What build_classifier may receive from a stored config, with the types allowed. Everything
# that would make timm read or fetch weights (pretrained, checkpoint_path, pretrained_cfg ...)
# is absent: a checkpoint carries its own weights.
_NETWORK_ARGS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "num_classes": (int,),
    "in_chans": (int,),
    "mean": (list,),
    "std": (list,),
    "pretrained": (bool,),
    "drop_rate": (int, float),
    "drop_path_rate": (int, float),
    "channels_last": (bool,),
    # a name in timm's activation table (silu, gelu, elu ...), never a dotted path: see build_network
    "act_layer": (str,),
}


def _refused(key: str, target: Any, source: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"refused to build `{key}` from the config in {source}: {why} (target {target!r}). A "
        "config that comes with a file may build only this package's models, datasets, seed "
        "sources and transforms from plain values, because anything else could run code. To "
        "use the file's weights with a config you trust, pass config=<experiment name or your "
        "own YAML> (load_classifier(path, config=...))."
    )


def _own_object(target: Any) -> Any:
    """The object a ``dat_lightning.*`` dotted path names, else None (nothing else is imported)."""
    if not isinstance(target, str):
        return None
    module_name, _, attr = target.rpartition(".")
    if module_name != "dat_lightning" and not module_name.startswith("dat_lightning."):
        return None
    try:
        return getattr(importlib.import_module(module_name), attr, None)
    except ImportError:
        return None


@cache
def data_builders() -> frozenset[Callable[..., Any]]:
    """The callables a stored ``data`` node may name: the datamodule, the dataset readers, the
    seed sources and the transforms of :mod:`dat_lightning.data`."""
    from dat_lightning.data import datamodule, datasets, generated, ood, transforms

    return frozenset({
        datamodule.DATDataModule,
        datasets.cifar10, datasets.cifar100, datasets.fashion_mnist, datasets.image_folder,
        datasets.restricted_imagenet,
        ood.OODImageFolder, ood.TinyImages, ood.UnlabeledImages,
        generated.HandwrittenDigits, generated.NaturalPhotoCrops, generated.UniformNoise,
        transforms.to_tensor, transforms.cifar_clf, transforms.cifar_gen, transforms.imagenet_clf,
        transforms.imagenet_gen, transforms.imagenet_ood, transforms.imagenet_val,
        transforms.fmnist_clf, transforms.fmnist_gen,
    })


def plain_container(node: Any, key: str, source: str, stored: bool) -> Any:
    """``node`` as plain Python containers; a stored config may hold no interpolation."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        if stored:
            _check_no_interpolation(OmegaConf.to_container(node, resolve=False), key, source)
        return OmegaConf.to_container(node, resolve=True)
    if stored:
        _check_no_interpolation(node, key, source)
    return node


def _check_no_interpolation(value: Any, key: str, source: str) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_no_interpolation(v, f"{key}.{k}", source)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_no_interpolation(v, f"{key}[{i}]", source)
    elif isinstance(value, str) and "${" in value:
        raise _refused(key, value, source, "a stored config is resolved when written and holds no "
                                           "interpolation")


def check_data_node(node: Any, key: str, source: str) -> None:
    """Raise unless every ``_target_`` in ``node`` is one of :func:`data_builders`, every value is
    plain (numbers, strings, lists, mappings) and nothing asks for a download."""
    if isinstance(node, Mapping):
        if "_target_" in node and _own_object(node["_target_"]) not in data_builders():
            raise _refused(key, node["_target_"], source, "it names no data builder of this package")
        for k, v in node.items():
            if k == "download" and v:
                raise _refused(f"{key}.{k}", v, source, "a config that comes with a file may not "
                               "download data; fetch the dataset yourself and point data_overrides at it")
            check_data_node(v, f"{key}.{k}", source)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            check_data_node(v, f"{key}[{i}]", source)
    elif not isinstance(node, _PLAIN):
        raise _refused(key, type(node).__name__, source, "values must be plain numbers, strings or lists")


def build_data(node: Any, key: str, source: str, stored: bool = True,
               overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """Instantiate a checked ``data`` node (or one of its parts, e.g. ``data.ood``).

    ``overrides`` (the user's own ``data_overrides``, trusted) are merged after the check;
    ``kwargs`` go to the builder (batch_size, num_workers).
    """
    spec = plain_container(node, key, source, stored)
    check_data_node(spec, key, source)
    merged = OmegaConf.merge(OmegaConf.create(spec), dict(overrides)) if overrides else OmegaConf.create(spec)
    return hydra.utils.instantiate(merged, **kwargs)


def build_network(node: Any, source: str, stored: bool = True):
    """The classifier of ``model.net``: :func:`~dat_lightning.models.build_classifier` called
    with a model name timm knows and checked plain values, never through ``instantiate``."""
    import timm

    from dat_lightning.models import build_classifier

    spec = plain_container(node, "model.net", source, stored)
    if not isinstance(spec, Mapping):
        raise CheckpointError(f"`model.net` in {source} is a {type(spec).__name__}, not a mapping")
    spec = dict(spec)
    target = spec.pop("_target_", None)
    if _own_object(target) is not build_classifier:
        raise _refused("model.net._target_", target, source,
                       "a network is rebuilt with dat_lightning.models.build_classifier only")
    for name, value in spec.items():
        allowed = _NETWORK_ARGS.get(name)
        if allowed is None:
            raise _refused(f"model.net.{name}", value, source, f"build_classifier takes no `{name}` from "
                           f"a file (allowed: {', '.join(_NETWORK_ARGS)})")
        if not isinstance(value, allowed) or isinstance(value, bool) and bool not in allowed:
            raise _refused(f"model.net.{name}", value, source, f"expected {'/'.join(t.__name__ for t in allowed)}")
    for name in ("mean", "std"):
        if name in spec and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec[name]):
            raise _refused(f"model.net.{name}", spec[name], source, "expected a list of numbers")
    if spec.get("pretrained"):
        raise _refused("model.net.pretrained", True, source, "a checkpoint carries its own weights")
    if not timm.is_model(spec.get("name", "")):
        raise _refused("model.net.name", spec.get("name"), source, "timm knows no model of that name")
    if "act_layer" in spec:
        # timm resolves a string through its own table of activation classes and imports nothing
        try:
            known = timm.layers.get_act_layer(spec["act_layer"]) is not None
        except KeyError:
            known = False
        if not known:
            raise _refused("model.net.act_layer", spec["act_layer"], source, "timm knows no activation of that name")
    return build_classifier(**spec)
