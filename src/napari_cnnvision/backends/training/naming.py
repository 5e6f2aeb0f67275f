"""Names of new models: never overwrite another model silently."""
from __future__ import annotations

import re
from pathlib import Path

from ...core.axes import InputError

_OK = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._+-]{0,78}[A-Za-z0-9_+-])?$")


def _taken(registry) -> set[str]:
    """Every model name in use, and every entry of the user folder, case-folded (a case-insensitive
    file system -- macOS, Windows -- would put ``Mine`` into ``mine``'s folder)."""
    names = {c.name.casefold() for c in registry.list()}
    root = Path(registry.user_dir)
    if root.is_dir():
        names |= {p.name.casefold() for p in root.iterdir()}
    return names


def check_new_name(name: str, registry) -> str:
    """``name`` stripped, or InputError when it is not a plain folder name or a model of that name
    exists (in any source: shipped, pretrained or the user's)."""
    name = (name or "").strip()
    if not _OK.match(name):
        raise InputError(f"the new model's name {name!r} must start with a letter or digit, hold only letters, "
                         "digits and . _ + - and not end with a dot (at most 80 characters)")
    if name.casefold() in _taken(registry) or (Path(registry.user_dir) / name).exists():
        exact = any(c.name == name for c in registry.list()) or (Path(registry.user_dir) / name).exists()
        why = "" if exact else " (in another case: on macOS and Windows both would share one folder)"
        raise InputError(f"a model named {name!r} exists already{why}; choose another name (e.g. "
                         f"{free_name(name, registry)!r})")
    return name


def free_name(base: str, registry) -> str:
    """``base`` or ``base-2``, ``base-3``... whichever is not taken yet."""
    base = base.rstrip(".") or "model"  # a trailing dot is not a portable folder name
    taken = _taken(registry)
    root = Path(registry.user_dir)
    name, k = base, 1
    while name.casefold() in taken or (root / name).exists():
        k += 1
        name = f"{base}-{k}"
    return name
