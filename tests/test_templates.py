"""Templates are bounded work: hostile Jinja (from a recipe, a rubric or a GGUF's
chat template) is stopped with a clear error instead of taking the machine's memory
or hanging the run (issue 27, items 6 and 21).

The hostile templates render in a child process with a 2 GB address-space limit, so
that a missing bound shows as a failed test (MemoryError, timeout), never as a
machine out of memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

import smolforge as sf
from smolforge.templates import TemplateLimitError, render

SRC = str(Path(sf.__file__).resolve().parent.parent)

HOSTILE = {
    "repeat": "{{ 'a' * 10**10 }}",
    "list repeat": "{{ [1, 2] * 10**10 }}",
    "nested ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "doubling ~": "{% set ns = namespace(x='ab') %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}"
                  "{% endfor %}{{ ns.x|length }}",
    "doubling +": "{% set ns = namespace(x='ab') %}{% for i in range(64) %}{% set ns.x = ns.x + ns.x %}{% endfor %}",
    "shared lists": "{% set ns = namespace(x=['aaaa']) %}{% for i in range(60) %}{% set ns.x = [ns.x, ns.x] %}"
                    "{% endfor %}{{ ns.x }}",
    "printf width": "{{ '%0999999999d' % 1 }}",
    "printf star": "{{ '%*d' % (999999999, 1) }}",
    "format width": "{{ '{:>9999999999}'.format(1) }}",
    "format nested width": "{{ '{:>{w}}'.format(1, w=9999999999) }}",
    "center filter": "{{ 'x'|center(9999999999) }}",
    "ljust method": "{{ 'x'.ljust(9999999999) }}",
    "power": "{{ 2 ** 1000000000 }}",
    "squaring": "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "exponential macro": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(80) }}",
    "macro buffer": "{% macro f() %}{% for i in range(100000) %}{{ big }}{% endfor %}{% endmacro %}{{ f()|length }}",
    "indent filter": "{{ ('a\n' * 100000)|indent(' ' * 100000) }}",
    "replace filter": "{{ ('a' * 1000000)|replace('', 'b' * 100000) }}",
    "join filter": "{{ (['a'] * 1000000)|join('b' * 1000000) }}",
    "output": "{% for i in range(100000) %}{{ big }}{% endfor %}",
    "slice filter": "{{ [1]|slice(999999999)|list|length }}",
    "batch filter": "{{ [1]|batch(999999999, 0)|list|length }}",
    "set block": "{% set x %}{% for i in range(100000) %}{{ big }}{% endfor %}{% endset %}{{ x|length }}",
}

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    import smolforge.templates as T
    T.RENDER_SECONDS = 1.0
    out = {}
    for name, source in json.loads(sys.argv[1]).items():
        t0 = time.monotonic()
        try:
            T.render(source, {"big": "b" * 1000})
            out[name] = ["rendered", "", 0]
        except BaseException as e:
            out[name] = [type(e).__name__, str(e), time.monotonic() - t0]
        print(json.dumps({name: out[name]}), flush=True)
""")


def test_hostile_templates_stop_with_a_clear_error_within_the_limits():
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(HOSTILE)], capture_output=True,
                          text=True, timeout=240, env=env)
    got = {}
    for line in proc.stdout.splitlines():
        got.update(json.loads(line))
    assert set(got) == set(HOSTILE), proc.stderr[-2000:]
    for name, (kind, message, seconds) in got.items():
        assert kind == "TemplateLimitError", (name, kind, message)
        assert ("time limit" in message) or ("the limit is" in message), (name, message)
        assert seconds < 30, (name, seconds)  # the clock stops loops and recursion at ~1 s


def test_ordinary_templates_render_as_before():
    src = ("Q: {{ q }}{% for c in choices %}\n{{ loop.index }}. {{ c|upper }}{% endfor %}\n"
           "{{ '%s=%d' % ('n', 3) }} {{ '{}-{}'.format('a', 'b') }} {{ 'ab' * 2 }} {{ q ~ '!' }} "
           "{{ [1, 2]|join(',') }} {{ range(3)|sum }} {{ [[1], [2]]|sum(start=[]) }} {{ 2 ** 10 }} "
           "{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(q) }} {{ 'x'|center(5) }}| {{ {'a': 1}|tojson }}")
    rec = {"q": "why", "choices": ["yes", "no"]}
    plain = ImmutableSandboxedEnvironment(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    assert render(src, rec) == plain.from_string(src).render(**rec).strip()
    assert render(src, rec).startswith("Q: why1. YES2. NO")
    # a record's text is data: a long one is fine, braces in it are printed as they are
    long = "{{ x }} " * 200_000
    assert render("{{ t }}", {"t": long}) == long.strip()


def test_a_hostile_recipe_template_rejects_records_with_the_reason_and_the_run_goes_on(tmp_path):
    recipe = {"name": "hostile", "seed": 1, "stages": [
        {"type": "items", "items": ["a", "b"]},
        {"type": "render", "output": "prompt",
         "template": "{% if text == 'a' %}{{ text * 10**10 }}{% else %}ok {{ text }}{% endif %}"}]}
    run = sf.run(recipe, tmp_path / "run")
    assert [r["prompt"] for r in run.data().to_pylist()] == ["ok b"]
    (rej,) = run.rejects().to_pylist()
    assert rej["reason"].startswith("template error: TemplateLimitError: repetition would be 10,000,000,000")


def test_chat_templates_are_bounded_too():
    from smolforge.engines.chat_template import ChatTemplate

    ok = ChatTemplate(None).render([{"role": "user", "content": "hi"}])
    assert ok == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(TemplateLimitError, match="repetition"):
        ChatTemplate("{{ messages[0]['content'] * 10**10 }}").render([{"role": "user", "content": "hi"}])


def test_jinja_requirement_excludes_versions_with_sandbox_escapes():
    """3.1.5 and 3.1.6 fix sandbox escapes (CVE-2024-56201, CVE-2024-56326, CVE-2025-27516)."""
    import tomllib
    from packaging.requirements import Requirement

    deps = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    (jinja,) = [Requirement(d) for d in deps if Requirement(d).name == "jinja2"]
    assert not jinja.specifier.contains("3.1.5") and not jinja.specifier.contains("3.1.4")
    assert jinja.specifier.contains("3.1.6")
