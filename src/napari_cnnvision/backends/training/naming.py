"""Names of new models: never overwrite another model silently."""
from __future__ import annotations

import re
from pathlib import Path

from ...core.axes import InputError

_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,79}$")


def check_new_name(name: str, registry) -> str:
    """``name`` stripped, or InputError when it is not a plain folder name or a model of that name
    exists (in any source: shipped, pretrained or the user's)."""
    name = (name or "").strip()
    if not _OK.match(name):
        raise InputError(f"the new model's name {name!r} must start with a letter or digit and hold only letters, "
                         "digits and . _ + - (at most 80 characters)")
    if any(c.name == name for c in registry.list()) or (Path(registry.user_dir) / name).exists():
        raise InputError(f"a model named {name!r} exists already; choose another name (e.g. "
                         f"{free_name(name, registry)!r})")
    return name


def free_name(base: str, registry) -> str:
    """``base`` or ``base-2``, ``base-3``... whichever is not taken yet."""
    taken = {c.name for c in registry.list()}
    root = Path(registry.user_dir)
    name, k = base, 1
    while name in taken or (root / name).exists():
        k += 1
        name = f"{base}-{k}"
    return name
