"""What a ``torch.save`` file refers to, read from its pickle opcodes without unpickling:
the classes and functions it would import and call when loaded.

``torch.load(weights_only=True)`` refuses such a file with advice to load it with
``weights_only=False``, i.e. to run its code; :func:`first_foreign_object` lets
:func:`functrain.checkpoint.load_checkpoint` say instead what the file holds.
"""

from __future__ import annotations

import os
import pickletools
import zipfile
from pathlib import Path

__all__ = ["first_foreign_object"]

# What a functrain checkpoint's pickle may name: torch's tensor and storage rebuilders (and
# the OrderedDict of a tensor's backward hooks). Anything else is code that a weights_only
# load refuses.
_TENSOR_MODULES = ("torch", "torch._utils", "torch._tensor", "torch.storage")
_PLAIN_GLOBALS = ("collections OrderedDict", "_codecs encode")


def _pickle_bytes(path: Path) -> bytes:
    """The pickle stream of a ``torch.save`` file (``<name>/data.pkl`` in its zip archive;
    the whole file in torch's legacy format)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            return archive.read(name)
    except (zipfile.BadZipFile, StopIteration):
        return path.read_bytes()


def first_foreign_object(path: str | os.PathLike[str]) -> str | None:
    """The first class or function (``"posix.system"``) named in a ``torch.save`` file that
    is not part of a tensor, read from its pickle opcodes without unpickling anything;
    ``None`` when there is none or the file cannot be parsed (truncated, corrupt)."""
    try:
        data = _pickle_bytes(Path(path))
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                name = str(arg)
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]} {strings[-1]}"
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if name.split(" ")[0] not in _TENSOR_MODULES and name not in _PLAIN_GLOBALS:
                return name.replace(" ", ".")
    except (ValueError, OSError, zipfile.BadZipFile, KeyError, EOFError):
        return None
    return None
