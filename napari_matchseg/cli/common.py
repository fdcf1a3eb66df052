"""What every ``matchseg`` command shares: the parser's look, progress bars, device and model options, output checks."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path

from ..errors import InputError
from ..registry import Option, Registry


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless there is none to say (no value, or a flag)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """The parser of ``matchseg`` and of each of its commands (sub-parsers are made of the same class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


@contextlib.contextmanager
def progress_bar(desc: str, unit: str = "img"):
    """``with progress_bar("adding") as update:``: a (done, total) callback drawing a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, unit_scale=unit == "B", file=sys.stderr, leave=False, disable=None)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total or None
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


def add_device_args(p: argparse.ArgumentParser, threads: bool = False) -> None:
    """``--device`` (and ``--threads`` for commands that train), worded the same for every command."""
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    if threads:
        p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def add_option(p, o: Option) -> None:
    """One registry :class:`Option` as an argparse option."""
    if o.type is bool:
        p.add_argument(o.flag, action="store_true", help=o.help)
    else:
        p.add_argument(o.flag, default=o.default, type=o.type, choices=o.choices, help=o.help)


def add_registry_options(p, registry: Registry, skip: set[str] | None = None) -> set[str]:
    """Each entry's options in a group of their own ("clip options"); flags in ``skip`` (already added) once.
    Returns the flags added."""
    added = set(skip or ())
    for entry in registry:
        todo = [o for o in entry.options if o.flag not in added]
        if todo:
            g = p.add_argument_group(f"{registry.kind} {entry.name}")
            for o in todo:
                add_option(g, o)
                added.add(o.flag)
    return added


def add_retriever_args(p: argparse.ArgumentParser, per_proposer: bool = False) -> None:
    """``per_proposer``: no default here; the proposer's own retriever is taken (``suggested_retriever``)."""
    from ..retrieval import DEFAULT_RETRIEVER, RETRIEVERS

    p.add_argument("--retriever", default=None if per_proposer else DEFAULT_RETRIEVER, choices=RETRIEVERS.names(),
                   help="similarity model (handcrafted needs no download)" + (
                       f"; default: the proposer's own (medsam for context, else {DEFAULT_RETRIEVER})"
                       if per_proposer else ""))
    add_device_args(p)
    add_registry_options(p, RETRIEVERS)


def retriever_from_args(args):
    from ..pipeline import option_dest
    from ..retrieval import RETRIEVERS, get_retriever

    entry = RETRIEVERS.get(args.retriever)
    values = {o.param: getattr(args, option_dest(o)) for o in entry.options}
    return get_retriever(args.retriever, **values, **({"device": args.device} if entry.takes_device else {}))


def dataclass_default(cls, name: str):
    """A dataclass field's default: the one place a default lives, read by the parser."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def add_fields(p, cls, helps: dict[str, str], flags: dict[str, str] | None = None,
               choices: dict[str, tuple] | None = None) -> None:
    """One option per dataclass field named in ``helps`` (flag ``--field-name`` unless ``flags`` says another),
    its default and type read from the dataclass: the parser is generated from the config, not copied by hand."""
    for name, help_text in helps.items():
        default = dataclass_default(cls, name)
        flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
        kwargs: dict = {"help": help_text, "default": default}
        if isinstance(default, (tuple, list)):
            kwargs.update(nargs="+", default=list(default))
        elif default is not None:
            kwargs["type"] = type(default)
        if choices and name in choices:
            kwargs["choices"] = choices[name]
        p.add_argument(flag, **kwargs)


def check_output_file(path: str | None, overwrite: bool, option: str) -> None:
    """Refuse an output file that cannot be written before any work is done (not after minutes of it)."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{option} {p} is a folder; give a file name")
    if not p.parent.is_dir():
        raise InputError(f"{option} {p}: the folder {p.parent} does not exist; create it first")
    if p.exists() and not overwrite:
        raise InputError(f"{option} {p} already exists; use --overwrite to replace it or choose another name")
