"""Config files shipped inside the package: list them, find them by name, copy them out.

The training configs, DeepSpeed and FSDP files and accelerate launch files live in the
``tokenweight/configs`` folder of the installed package (a repository checkout reaches the
same folder through its ``configs`` link). One rule finds every config reference — the
file given to ``tokenweight train``, an ``inherit:`` entry, ``train.deepspeed`` and
``train.fsdp_config``:

1. a file path: ``inherit`` entries relative to the file that names them, everything
   else relative to the current directory;
2. if there is no such file, a packaged name: the path inside ``tokenweight/configs``,
   with or without ``.yaml`` and with or without a leading ``configs/``, so
   ``paper/dense_self``, ``paper/dense_self.yaml`` and ``configs/paper/dense_self.yaml``
   all name the same file.

A file of yours therefore always wins over a packaged one of the same name. A packaged
config that was renamed keeps its old name as an alias (:data:`RENAMED`): it finds the new
file and warns (``FutureWarning``) that the old name will be removed.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "INHERIT_KEY",
    "LIST_HINT",
    "PACKAGED_DIR",
    "RENAMED",
    "PackagedConfig",
    "copy_config",
    "find_config",
    "find_packaged",
    "load_raw_config",
    "merge_configs",
    "packaged_configs",
    "resolve_config_paths",
]

INHERIT_KEY = "inherit"
PACKAGED_DIR = Path(__file__).resolve().parent.parent / "configs"
_SUFFIXES = (".yaml", ".yml", ".json")
LIST_HINT = "`tokenweight configs list` shows the packaged configs"
# Settings of a training config that name another config file (a dotted key each).
PATH_KEYS = (("train", "deepspeed"), ("train", "fsdp_config"))
# Old packaged names -> new ones (names as ``tokenweight configs list`` shows them). The
# ``*_frozen`` configs read scores stored by ``tokenweight score``: the ``precomputed``
# scorer kind, whose old name ``frozen`` is an alias in ``tokenweight.core.scorer_kinds`` too.
RENAMED: dict[str, str] = {
    "paper/dense_frozen": "paper/dense_precomputed",
    "paper/sparse_frozen": "paper/sparse_precomputed",
    "paper/longce_frozen": "paper/longce_precomputed",
    "paper/ppmi_frozen": "paper/ppmi_precomputed",
    "paper/npmi_frozen": "paper/npmi_precomputed",
    "paper/scorer_frozen": "paper/scorer_precomputed",
    "cpu/smollm2_frozen": "cpu/smollm2_precomputed",
}
_KINDS = {
    "accelerate": "accelerate launch file",
    "deepspeed": "DeepSpeed file (train.deepspeed)",
    "fsdp": "FSDP",
}


@dataclass(frozen=True)
class PackagedConfig:
    """One packaged file: ``name`` (what ``train`` and ``configs copy`` take), its
    ``path`` on disk, and a one-line ``description`` (the file's first comment line)."""

    name: str
    path: Path
    description: str


def _name_of(path: Path) -> str:
    rel = path.relative_to(PACKAGED_DIR).as_posix()
    return rel.removesuffix(".yaml")


def _description(path: Path) -> str:
    if path.suffix == ".json":
        return _KINDS.get(path.parent.name, "JSON settings")
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#") or not text.lstrip("#").strip():
            break
        words.append(text.lstrip("#").strip())
    first = " ".join(words)
    if len(first) > 78:
        first = first[:77].rsplit(" ", 1)[0] + " ..."
    return first or _KINDS.get(path.parent.name, "")


def packaged_configs() -> list[PackagedConfig]:
    """Every packaged config file, sorted by name."""
    paths = sorted(p for p in PACKAGED_DIR.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
    return [PackagedConfig(_name_of(p), p, _description(p)) for p in paths]


def find_packaged(name: str | Path) -> Path | None:
    """The packaged file called ``name`` (see the module docstring), or ``None``. An old
    name of :data:`RENAMED` finds the renamed file and warns."""
    text = Path(name).as_posix().removeprefix("./").removeprefix("configs/")
    if not text or text.startswith("/") or ".." in Path(text).parts:
        return None
    candidates = [text] if Path(text).suffix in _SUFFIXES else [f"{text}.yaml", text]
    for candidate in candidates:
        path = PACKAGED_DIR / candidate
        if path.is_file():
            return path
    old = text.removesuffix(".yaml")
    new = RENAMED.get(old)
    if new is None:
        return None
    warnings.warn(
        f"packaged config {old!r} is now called {new!r}; the old name will be removed",
        FutureWarning,
        stacklevel=2,
    )
    return PACKAGED_DIR / f"{new}.yaml"


def find_config(ref: str | Path, *, relative_to: Path | None = None, what: str = "config") -> Path:
    """Resolve a config reference: a file (relative to ``relative_to``, default the current
    directory) or else a packaged name. Raises :class:`TokenWeightError` naming ``what``
    and how to list the packaged configs when neither exists."""
    path = Path(ref).expanduser()
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    if path.is_file():
        return path.resolve()
    packaged = find_packaged(ref)
    if packaged is not None:
        return packaged
    if path.is_dir():
        raise TokenWeightError(f"{what}: {ref} is a folder; give a config file or a name")
    raise TokenWeightError(
        f"{what}: config file not found: {ref} (no such file, nor a packaged config of "
        "that name); "
        f"{LIST_HINT}, e.g. `tokenweight train cpu/smollm2`"
    )


def resolve_config_paths(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with the file settings of :data:`PATH_KEYS` that name no file but a packaged
    config replaced by the packaged file's absolute path (a file of yours stays as written;
    a missing one is left for the Trainer set-up to report)."""
    out = copy.deepcopy(dict(data))
    for section, key in PATH_KEYS:
        node = out.get(section)
        value = node.get(key) if isinstance(node, Mapping) else None
        if not isinstance(value, str) or not value or Path(value).expanduser().is_file():
            continue
        packaged = find_packaged(value)
        if packaged is not None:
            assert isinstance(node, dict)  # value was read from it above
            node[key] = str(packaged)
    return out


def merge_configs(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` merged onto ``base`` (copies): mappings key by key, everything else, and the
    ``scheme`` whole, replaced."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if key != "scheme" and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_configs(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML
    silently keeps the last one)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise TokenWeightError(
                    f"key {key!r} is given twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}); keep one"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TokenWeightError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except UnicodeDecodeError as exc:
        raise TokenWeightError(
            f"{path}: not a UTF-8 text file (byte {exc.start}); give a YAML config"
        ) from None
    except TokenWeightError as exc:
        raise TokenWeightError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise TokenWeightError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise TokenWeightError(f"{path}: the top level must be a mapping of sections")
    return dict(data)


def load_raw_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config (a file or a packaged name) with its ``inherit`` chain resolved
    (not yet validated)."""
    path = find_config(path) if not _seen else Path(path)
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise TokenWeightError(f"inherit: circular chain {chain}")
    data = _read_yaml(path)
    parents = data.pop(INHERIT_KEY, None)
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise TokenWeightError(f"{path}: inherit: expected a file name or a list of them")
    merged: dict[str, Any] = {}
    for parent in parents:
        found = find_config(parent, relative_to=path.parent, what=f"{path}: inherit")
        merged = merge_configs(merged, load_raw_config(found, (*_seen, path)))
    return merge_configs(merged, data)


def _parents(text: str) -> list[str]:
    """The ``inherit`` entries of a config's YAML text (empty when it inherits nothing)."""
    data = yaml.safe_load(text)
    parents = data.get(INHERIT_KEY) if isinstance(data, Mapping) else None
    return [parents] if isinstance(parents, str) else [str(p) for p in parents or []]


def _flattened_text(source: Path, parents: list[str], version: str) -> str:
    """The YAML of ``source`` with its ``inherit`` chain merged in, under a header naming
    where it came from and keeping ``source``'s own leading comments."""
    comments = []
    for line in source.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        comments.append(line)
    header = [
        f"# `tokenweight configs copy {_name_of(source)}` (tokenweight {version}): the packaged",
        f"# config with what it inherits ({', '.join(parents)}) merged in; it stands alone.",
        "#",
        *comments,
    ]
    merged = load_raw_config(source)
    return "\n".join(header) + "\n" + yaml.safe_dump(merged, sort_keys=False)


def copy_config(name: str, dest: str | Path | None = None) -> Path:
    """Copy the packaged config ``name`` to ``dest`` and return the written path.

    ``dest``: a file name, an existing folder (the file keeps its name), or ``None`` for
    the current folder. A YAML file that inherits others is written flattened (the merged
    settings in one file that works anywhere); every other file is copied byte for byte.
    An existing file is never overwritten.
    """
    from tokenweight import __version__
    from tokenweight.infra.files import atomic_write_bytes, atomic_write_text

    source = find_packaged(name)
    if source is None:
        raise TokenWeightError(f"configs copy: no packaged config {name!r}; {LIST_HINT}")
    target = Path(dest).expanduser() if dest is not None else Path.cwd()
    if target.is_dir():
        target = target / source.name
    if target.exists():
        raise TokenWeightError(
            f"configs copy: {target} already exists; give another DEST or remove it first"
        )
    if not target.parent.is_dir():
        blocker = next((p for p in target.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise TokenWeightError(
                f"configs copy: DEST {dest} lies under {blocker}, which is a file, not a folder"
            )
        raise TokenWeightError(f"configs copy: folder {target.parent} does not exist")
    parents = _parents(source.read_text(encoding="utf-8")) if source.suffix != ".json" else []
    try:
        if parents:
            return atomic_write_text(target, _flattened_text(source, parents, __version__))
        return atomic_write_bytes(target, source.read_bytes())
    except OSError as exc:
        raise TokenWeightError(
            f"configs copy: cannot write {target} ({exc.strerror or exc}); choose another DEST"
        ) from None
