"""MkDocs hooks for functrain's site (named in mkdocs.yml, run by ``mkdocs build``).

- ``<!-- readme: Section -->`` in a page is replaced by that ``## Section`` of README.md (its
  ``###`` subsections become the page's ``##``), so the README stays the one source of the
  prose; a README link to an anchor that now lives on another page is pointed there.
- ``<!-- schedule-gallery -->`` becomes one plot per mmengine scheduler, drawn at build time
  by :func:`functrain.schedules.plot_schedules` from the config shown beside it.
- An "API reference" section is appended to the nav: one page of mkdocstrings output per
  public module that exists (a module added later gets a page without editing this file).
- The optimizer table must name every optimizer functrain registers, and the callbacks table
  every hook type a config can name, or the build fails.

A README section that is on no page, a page naming a section the README does not have, or an
optimizer left out of the table is an error (the build stops),
not a warning, so ``mkdocs build --strict`` in CI catches it.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
READ_ME = re.compile(r"<!-- readme: (?P<name>[^>]+?) -->")
GALLERY = "<!-- schedule-gallery -->"
EVENTS = "<!-- callback-events -->"

# (page, title, modules): the reference pages in nav order. A module that does not exist (yet)
# is left out; a public subpackage or module of functrain named nowhere here gets its own page.
REFERENCE: list[tuple[str, str, list[str]]] = [
    ("functrain", "functrain", ["functrain"]),
    ("transforms", "functrain.transforms", ["functrain.transforms"]),
    ("optimizers", "optimizers", []),  # filled by _optimizer_paths()
    ("schedules", "functrain.schedules", ["functrain.schedules"]),
    (
        "loop",
        "state, step, loops, runner",
        [
            "functrain.state",
            "functrain.step",
            "functrain.loops",
            "functrain.runner",
            "functrain.evaluators",
            "functrain.metrics",
        ],
    ),
    ("callbacks", "functrain.callbacks", ["functrain.callbacks"]),
    (
        "checkpoint",
        "checkpoints",
        ["functrain.checkpoint", "functrain.data_position", "functrain.pickle_scan"],
    ),
    ("config", "functrain.config", ["functrain.config"]),
    ("cli", "functrain.cli", ["functrain.cli"]),
    ("distributed", "functrain.distributed", ["functrain.distributed", "functrain.ranks"]),
    ("visualization", "functrain.visualization", ["functrain.visualization"]),
    ("tree", "trees and packing", ["functrain.tree", "functrain.packing"]),
    ("zoo", "functrain.zoo", ["functrain.zoo"]),
    ("testing", "functrain.testing", ["functrain.testing"]),
]
# Internal helpers of other modules, documented through the modules that use them.
NOT_OWN_PAGE = {"functrain.runner_checkpoint", "functrain.runner_log"}

# The scheduler gallery: (mmengine scheduler dict, steps drawn). One item per scheduler type.
GALLERY_ITEMS: list[tuple[dict[str, Any], int]] = [
    (dict(type="ConstantLR", factor=0.5, end=40), 100),
    (dict(type="LinearLR", start_factor=0.1, end=40), 100),
    (dict(type="StepLR", step_size=30, gamma=0.5), 100),
    (dict(type="MultiStepLR", milestones=[50, 80], gamma=0.1), 100),
    (dict(type="ExponentialLR", gamma=0.97), 100),
    (dict(type="CosineAnnealingLR", T_max=100, eta_min=0.01), 100),
    (dict(type="PolyLR", eta_min=0.001, power=2.0, end=100), 100),
    (dict(type="OneCycleLR", eta_max=0.1, total_steps=100), 100),
    (
        dict(type="CosineRestartLR", periods=[30, 70], restart_weights=[1.0, 0.5], eta_min=0.01),
        100,
    ),
]
BASE_LR = 0.1

# Markdown files at the repository's root that become pages (when they exist), and the nav
# title of each; a link to one of them in a README section is pointed at its page.
ROOT_PAGES = {"ARCHITECTURE.md": ("architecture.md", "Architecture")}


def _public_modules() -> set[str]:
    """functrain's subpackages and modules whose names do not start with ``_``."""
    import functrain

    return {
        info.name
        for info in pkgutil.iter_modules(functrain.__path__, "functrain.")
        if not info.name.rsplit(".", 1)[1].startswith("_")
    }


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _optimizer_paths() -> list[str]:
    """Where every optimizer and every ``functrain.transforms`` name that shares its name with
    a submodule (``adam``, ``lion``, ``loss_scaling``, ...) is defined. griffe, like the
    import system, sees ``functrain.transforms.lion`` as the module, so these are documented
    under their defining module's path on a page of their own."""
    import functrain.transforms as transforms
    from functrain.transforms import EXTRA_OPTIMIZERS, TORCH_OPTIMIZERS

    submodules = {info.name for info in pkgutil.iter_modules(transforms.__path__)}
    objects = [*TORCH_OPTIMIZERS.values(), *EXTRA_OPTIMIZERS.values()]
    objects += [getattr(transforms, n) for n in transforms.__all__ if n in submodules]
    paths: list[str] = []
    for obj in objects:
        path = f"{obj.__module__}.{obj.__qualname__}"
        if path not in paths:
            paths.append(path)
    return paths


def _reference_pages() -> list[tuple[str, str, list[str]]]:
    pages = []
    named: set[str] = set()
    for page, title, modules in REFERENCE:
        if page == "optimizers":
            pages.append((page, title, _optimizer_paths()))
            continue
        present = [m for m in modules if _exists(m)]
        named.update(modules)
        if present:
            pages.append((page, title, present))
    for module in sorted(_public_modules() - named - NOT_OWN_PAGE - {"functrain.__main__"}):
        pages.append((module.rsplit(".", 1)[1], module, [module]))
    return pages


def _reference_markdown(title: str, modules: list[str]) -> str:
    if modules == [title]:
        # One module: its own heading is the page's title (no second, identical heading).
        # The top level re-exports names documented on the other pages: docstring only.
        members = "\n      members: false" if title == "functrain" else ""
        return f"::: {title}\n    options:\n      heading_level: 1{members}\n"
    blocks = [f"# {title}\n"]
    if title == "optimizers":
        blocks.append(
            "Every optimizer by the module that defines it (all are importable from "
            "`functrain` and `functrain.transforms` too).\n"
        )
    for module in modules:
        blocks.append(f"::: {module}\n")
    return "\n".join(blocks)


# --------------------------------------------------------------------------- README sections


def _readme_sections() -> dict[str, str]:
    """``{"Quick start": body}`` for each ``## `` section (fenced code is not a heading)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    fenced = False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
            continue
        if current is not None:
            # One level up: the page's own "# Title" is the section heading.
            current.append(line[1:] if not fenced and line.startswith("### ") else line)
    return {name: "\n".join(lines).strip() + "\n" for name, lines in sections.items()}


def _expand(markdown: str, page: str) -> str:
    sections = _readme_sections()

    def section(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in sections:
            raise PluginError(
                f"docs/{page}: README.md has no section '## {name}' "
                f"(sections: {', '.join(sections)})"
            )
        return sections[name]

    return READ_ME.sub(section, markdown)


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text).strip("-")


def _anchors(markdown: str) -> set[str]:
    anchors = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


# --------------------------------------------------------------------------- schedule plots


def _gallery(files: Files, config: MkDocsConfig) -> str:
    from functrain.schedules import from_mmengine, plot_schedules

    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg, steps in GALLERY_ITEMS:
            name = cfg["type"]
            schedule = from_mmengine(cfg, base=BASE_LR, param="lr")
            png = plot_schedules(
                {name: schedule},
                steps,
                Path(tmp) / f"{name}.png",
                title=f"{name} (base lr {BASE_LR})",
                xlabel="iteration",
                ylabel="lr",
            )
            uri = f"img/schedules/{name}.png"
            files.append(File.generated(config, uri, content=png.read_bytes()))
            args = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
            parts.append(
                f"### {name}\n\n```python\nparam_scheduler = dict({args}, by_epoch=False)\n```\n\n"
                f"![{name}]({uri})\n"
            )
    return "\n".join(parts)


# --------------------------------------------------------------------------- hooks

_state: dict[str, Any] = {}


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    for source, (page, title) in ROOT_PAGES.items():
        if (ROOT / source).is_file():
            config.nav.append({title: page})
    pages = _reference_pages()
    _state["reference"] = pages
    config.nav.append(
        {"API reference": [{title: f"reference/{page}.md"} for page, title, _ in pages]}
    )
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for source, (page, _) in ROOT_PAGES.items():
        if (ROOT / source).is_file():
            text = (ROOT / source).read_text(encoding="utf-8")
            files.append(File.generated(config, page, content=text))
    for page, title, modules in _state["reference"]:
        files.append(
            File.generated(
                config, f"reference/{page}.md", content=_reference_markdown(title, modules)
            )
        )
    _state["gallery"] = _gallery(files, config)
    # Which page holds which anchor, for README links that now cross pages.
    owner: dict[str, str] = {}
    for file in files.documentation_pages():
        if file.abs_src_path and Path(file.abs_src_path).is_file():
            text = _expand(Path(file.abs_src_path).read_text(encoding="utf-8"), file.src_uri)
            for anchor in _anchors(text):
                owner.setdefault(anchor, file.src_uri)
    _state["anchors"] = owner
    _check_every_section_placed(files)
    return files


def _check_every_section_placed(files: Files) -> None:
    """Each README section is on some page: the site is the README's sections (plus the
    reference), so a section added to the README must be given a page too."""
    placed = set()
    for file in files.documentation_pages():
        if file.abs_src_path and Path(file.abs_src_path).is_file():
            placed.update(READ_ME.findall(Path(file.abs_src_path).read_text(encoding="utf-8")))
    missing = [name for name in _readme_sections() if name not in placed]
    if missing:
        raise PluginError(
            "README.md sections on no page of the site (add a '<!-- readme: NAME -->' line "
            "to a page under docs/): " + ", ".join(missing)
        )


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    uri = page.file.src_uri
    markdown = _expand(markdown, uri).replace(GALLERY, _state["gallery"])
    here = _anchors(markdown)

    def relink(match: re.Match[str]) -> str:
        anchor = match[1]
        target = _state["anchors"].get(anchor)
        if anchor in here or target is None:
            return match[0]
        depth = uri.count("/")
        return f"]({'../' * depth}{target}#{anchor})"

    markdown = re.sub(r"\]\(#([\w-]+)\)", relink, markdown)
    for source, (target, _) in {"README.md": ("index.md", ""), **ROOT_PAGES}.items():
        markdown = markdown.replace(f"]({source}", f"]({'../' * uri.count('/')}{target}")
    if uri == "transforms.md":
        _check_optimizer_table(markdown)
    if uri == "loop.md":
        from functrain.callbacks import EVENTS as names

        markdown = markdown.replace(EVENTS, ", ".join(f"`{n}`" for n in names))
        _check_hook_table(markdown)
    return markdown


def _check_optimizer_table(markdown: str) -> None:
    """Every optimizer a config can name has a row in the equivalents table."""
    from functrain.transforms import EXTRA_OPTIMIZERS, TORCH_OPTIMIZERS

    rows = set(re.findall(r"^\| \[`(\w+)`\]", markdown, flags=re.M))
    missing = [
        f.__name__
        for f in [*TORCH_OPTIMIZERS.values(), *EXTRA_OPTIMIZERS.values()]
        if f.__name__ not in rows
    ]
    if missing:
        raise PluginError(
            "docs/transforms.md: the optimizer table has no row for " + ", ".join(missing)
        )


def _check_hook_table(markdown: str) -> None:
    """Every hook type a config can name (the ``HOOKS`` registry) is in the callbacks table."""
    from functrain.config import HOOKS

    missing = [name for name in HOOKS if f"`{name}`" not in markdown]
    if missing:
        raise PluginError("docs/loop.md: the callbacks table does not name " + ", ".join(missing))
