"""The one way to load a config: :func:`load_config`.

It reads a JSON file, applies ``--set`` overrides, picks the config kind from the file's sections (each kind
declares its own, see :class:`medgen.config.run.RunConfig`), validates, and resolves the config's input paths
(``data_base_dir``, ``val_dir``, ...): a relative path is taken from the current folder, or, when nothing is
there, from the folder that holds the config file. Training, ``check-data``, reconstruct/encode and the
bundles all load configs through it, so a config means the same data everywhere.
"""

from __future__ import annotations

from pathlib import Path

from medgen.config.core import ConfigError, apply_overrides, read_json
from medgen.config.run import RunConfig

# Keys naming inputs that must already exist; resolved against the config's folder when not found here.
INPUT_PATH_KEYS = ("data_base_dir", "val_dir", "resume_from", "autoencoder_checkpoint")


def resolve_input_path(value: str, config_file: str | Path | None) -> str:
    """``value`` as given when it exists (or is absolute, or there is no config file); otherwise the same
    relative path under the config file's folder when that exists."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or config_file is None:
        return str(path)
    beside = Path(config_file).parent / path
    return str(beside) if beside.exists() else str(path)


def config_kind(data: dict, expected: type[RunConfig] | None = None) -> type[RunConfig]:
    """The config class whose sections ``data`` holds (its ``section`` or one of its ``marker_keys``); when it
    names none, ``expected`` or else the first kind registered (the VAE, medgen's main job).

    Raises:
        ConfigError: ``data`` mixes the sections of several kinds, or is of another kind than ``expected``.
    """
    found = [kind for kind in RunConfig.kinds if {kind.section, *kind.marker_keys} & data.keys()]
    if len(found) > 1:
        raise ConfigError(f"the config mixes the sections of {' and '.join(k.__name__ for k in found)} "
                          f"({', '.join(sorted({k.section for k in found}))}); keep one method's sections per file")
    if found and expected is not None and not issubclass(found[0], expected):
        raise ConfigError(f"this is a {found[0].title} config (it has {found[0].section}), not a {expected.title} config "
                          f"(with {expected.section}); give it to the command of its own method")
    return found[0] if found else (expected or RunConfig.kinds[0])


def load_config(path: str | Path | None, overrides: list[str] = (), cls: type[RunConfig] | None = None):
    """Read a config file (or the defaults when ``path`` is None), apply ``--set`` overrides, validate.

    Args:
        path: the JSON file.
        overrides: ``key.path=VALUE`` strings (``--set``).
        cls: the config class the caller needs (``VAEConfig``, ``WGANConfig``, ``LDMConfig``): a file of another
            kind is refused in one line; None picks it with :func:`config_kind`.

    Returns:
        the validated config, its input paths resolved (see the module docstring).
    """
    data = read_json(path) if path is not None else {}
    apply_overrides(data, list(overrides))
    try:
        cls = config_kind(data, cls)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    for key in INPUT_PATH_KEYS:
        if isinstance(data.get(key), str):
            data[key] = resolve_input_path(data[key], path)
    return cls.from_dict(data)


__all__ = ["INPUT_PATH_KEYS", "config_kind", "load_config", "resolve_input_path"]
