"""A griffe extension for functrain's docstrings (named in mkdocs.yml).

The docstrings are Google style with two habits from Sphinx that Markdown does not know:

- a singular ``Example:`` section, which griffe only knows as ``Examples:``; unknown, it is
  rendered as Markdown, where a doctest's output such as ``[1.0, 0.5]`` reads as a link;
- roles such as ``:func:`~functrain.transforms.chain```, which Markdown prints literally.

This extension renames the section header and turns each role into a code span that links to
the object's reference entry when there is one (an *optional* cross-reference: a target that is
not documented, such as a private helper, stays plain code instead of failing the build).
Nothing else in a docstring is changed.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.M)
_ROLE = re.compile(
    r":(?:func|class|meth|attr|mod|data|obj|exc|const):`(?P<tilde>~?)(?P<target>[^`]+)`"
)


def _role(match: re.Match[str], module: str) -> str:
    target = match["target"].strip()
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    shown = shown.removesuffix("()")
    target = target.removesuffix("()")
    # A bare or relative name is looked up from the docstring's own module.
    identifier = target if target.startswith(("functrain.", "torch.")) else f"{module}.{target}"
    return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'


class ExampleSections(Extension):
    """Read ``Example:`` as the ``Examples:`` section, and Sphinx roles as references."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        """Rewrite before the docstring is parsed (griffe parses lazily)."""
        if obj.docstring is None:
            return
        module = obj.module.path
        text = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
        obj.docstring.value = _ROLE.sub(lambda m: _role(m, module), text)
