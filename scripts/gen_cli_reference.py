"""Write docs/reference/cli.md from the ``ijepa`` command's argparse parser: one section per command, its
description, a usage line, a table of its arguments (with defaults and choices) and its epilog.

    python scripts/gen_cli_reference.py            # rewrite docs/reference/cli.md
    python scripts/gen_cli_reference.py --check    # exit 1 when the page is not what the parser says

The page is built from the parser's actions rather than argparse's own help text, whose layout changes between
Python versions, so the page (and the test that checks it is current) is the same on every supported Python.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from ijepa.cli import build_parser

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "cli.md"

HEADER = """\
# The `ijepa` command

Generated from the command's parser by `python scripts/gen_cli_reference.py` (a test checks this page is current).
`ijepa COMMAND --help` prints the same. Every error the package raises on purpose is printed as one line,
`ijepa: <kind>: <message>`, with a non-zero exit status.
"""


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each command under ``parser``, depth first, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub
                for child, child_help, child_parser in subcommands(sub):
                    yield f"{name} {child}", child_help, child_parser


def expanded_help(action: argparse.Action) -> str:
    """The action's help with argparse's ``%(default)s``-style fields filled in, on one line."""
    if not action.help:
        return ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    return " ".join((action.help % params).split())


def cell(text: str) -> str:
    """Text safe in a Markdown table cell: no column breaks, no angle brackets read as HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            name = ", ".join(f"`{s}`" for s in action.option_strings)
            if action.nargs != 0:
                metavar = action.metavar or (f"{{{','.join(map(str, action.choices))}}}" if action.choices
                                             else action.dest.upper())
                name += f" `{metavar}`"
        else:
            name = f"`{action.metavar or action.dest}`" + (" …" if action.nargs in ("*", "+") else "")
        default = action.default
        shown = "" if default in (None, argparse.SUPPRESS, False) or action.nargs == 0 else f"`{default!r}`"
        if isinstance(default, str):
            shown = f"`{default}`" if default else "`''`"
        required = " (required)" if action.required and action.option_strings else ""
        rows.append(f"| {name} | {shown} | {cell(expanded_help(action))}{required} |")
    return rows


def usage(name: str, parser: argparse.ArgumentParser) -> str:
    parts = [f"ijepa {name}"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            parts.append(f"{action.metavar or 'COMMAND'} ...")
        elif not action.option_strings:
            mv = action.metavar or action.dest
            parts.append(f"[{mv} ...]" if action.nargs == "*" else mv)
    if any(a.option_strings and not isinstance(a, argparse._HelpAction) for a in parser._actions):
        parts.insert(1, "[options]")
    return " ".join(parts)


def render() -> str:
    top = build_parser()
    out = [HEADER, "## Commands", "", "| command | what it does |", "|---|---|"]
    commands = list(subcommands(top))
    for name, help_text, _ in commands:
        anchor = "ijepa-" + name.replace(" ", "-")
        out.append(f"| [`ijepa {name}`](#{anchor}) | {cell(help_text)} |")
    for name, help_text, parser in commands:
        out += ["", f"## ijepa {name}", ""]
        text = parser.description or help_text
        if text:
            out += [cell(" ".join(text.split())), ""]
        out += ["```text", usage(name, parser), "```", ""]
        rows = argument_rows(parser)
        if rows:
            out += ["| argument | default | meaning |", "|---|---|---|", *rows]
        if parser.epilog:
            out += ["", "```text", parser.epilog.rstrip(), "```"]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if the page is out of date instead of writing it")
    args = p.parse_args()
    text = render()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run python scripts/gen_cli_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
