"""Renders chat templates as transformers does (its Jinja2 environment: a sandbox with
trim_blocks and lstrip_blocks, loop controls, `{% generation %}` blocks, its `tojson`,
`raise_exception` and `strftime_now`), for galley's chat-template test to compare with.

usage: render_templates.py DIR CASES.json  -> prints {template: {case: text | {"error": msg}}}
Each case is {"messages": [...], "tools": [...] | null, "add_generation_prompt": bool}.
The date strftime_now sees is fixed at 2026-01-01, as galley's is, so renders reproduce.
"""

import datetime
import json
import os
import sys

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class Generation(Extension):
    """`{% generation %}...{% endgeneration %}` renders its body (transformers records where
    it is for assistant masks; the text is the same)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.datetime(2026, 1, 1).strftime(fmt)


def main():
    folder, cases_path = sys.argv[1], sys.argv[2]
    with open(cases_path) as f:
        cases = json.load(f)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    out = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".jinja"):
            continue
        with open(os.path.join(folder, name)) as f:
            src = f.read()
        row = {}
        try:
            t = env.from_string(src)
        except Exception as e:
            out[name[: -len(".jinja")]] = {"error": f"compile: {e}"}
            continue
        for key, case in cases.items():
            try:
                row[key] = t.render(messages=case["messages"], tools=case["tools"],
                                    add_generation_prompt=case["add_generation_prompt"],
                                    bos_token="<s>", eos_token="</s>")
            except Exception as e:
                row[key] = {"error": f"{type(e).__name__}: {e}"}
        out[name[: -len(".jinja")]] = row
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
