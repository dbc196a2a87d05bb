"""Teacher licences: may a model trained on these outputs be distributed?

Some teams may only train on data from permissively licensed teachers (Nvidia's
Nemotron data, for one, is built from such models), and several model licences
say what may be done with their outputs: Llama 2 forbids improving other LLMs
with them, Llama 3.1+ asks that such a model's name start with "Llama", Gemma's
terms make a distilled model a "Model Derivative", OpenAI's and Anthropic's terms
forbid building competing models. So every engine carries a licence, found in this
order:

1. `licence:` in the engine's config (any id; ids of `LICENCES` get their terms);
2. the GGUF file's own metadata (`general.license`, `general.license.name`), for
   llama.cpp engines (the bundled SmolLM2 says `apache-2.0`);
3. a built-in table of common model families, matched on the model name;
4. otherwise `unknown`, which is reported as such (not as permitted).

`training` is what the licence says about training other models on the outputs:
`permitted`, `conditions` (allowed with attribution or naming rules), `restricted`
(forbidden, or limited to research / non-competing use) or `unknown`. `show`, the
HTML report and the dataset card warn on anything but `permitted`. This table is
a summary to flag records for a human to check, not legal advice.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

PERMITTED, CONDITIONS, RESTRICTED, UNKNOWN = "permitted", "conditions", "restricted", "unknown"


@dataclass(frozen=True)
class Licence:
    id: str
    name: str
    training: str  # permitted | conditions | restricted | unknown
    note: str = ""
    url: str = ""
    source: str = "table"  # config | gguf | table | unknown

    @property
    def warns(self) -> bool:
        """Whether training other models on the outputs needs a human to check."""
        return self.training != PERMITTED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _l(id: str, name: str, training: str, note: str = "", url: str = "") -> Licence:
    return Licence(id, name, training, note, url)


_OPEN = "a permissive open-source licence; it places no limit on training with the outputs"
LICENCES: dict[str, Licence] = {lic.id: lic for lic in [
    _l("apache-2.0", "Apache License 2.0", PERMITTED, _OPEN, "https://www.apache.org/licenses/LICENSE-2.0"),
    _l("mit", "MIT License", PERMITTED, _OPEN, "https://opensource.org/license/mit"),
    _l("bsd-3-clause", "BSD 3-Clause", PERMITTED, _OPEN),
    _l("cc-by-4.0", "CC BY 4.0", PERMITTED, "attribution of the licensed material"),
    _l("llama2", "Llama 2 Community License", RESTRICTED,
       "section 1.v: the Llama Materials or any output may not be used to improve any other "
       "large language model (excluding Llama 2 or its derivatives)",
       "https://ai.meta.com/llama/license/"),
    _l("llama3", "Meta Llama 3 Community License", RESTRICTED,
       "section 1.v: outputs may not be used to improve any other large language model "
       "(excluding Meta Llama 3 or its derivatives)", "https://www.llama.com/llama3/license/"),
    _l("llama3.1", "Llama 3.1 Community License", CONDITIONS,
       "a model trained on the outputs and distributed must include \"Llama\" at the start of its "
       "name and show \"Built with Llama\"; over 700M monthly users need a licence from Meta",
       "https://www.llama.com/llama3_1/license/"),
    _l("llama3.2", "Llama 3.2 Community License", CONDITIONS,
       "as Llama 3.1: a model trained on the outputs must be named \"Llama ...\" and show "
       "\"Built with Llama\"; the multimodal models exclude EU residents",
       "https://www.llama.com/llama3_2/license/"),
    _l("llama3.3", "Llama 3.3 Community License", CONDITIONS,
       "as Llama 3.1: a model trained on the outputs must be named \"Llama ...\" and show "
       "\"Built with Llama\"", "https://www.llama.com/llama3_3/license/"),
    _l("qwen", "Qwen License Agreement", CONDITIONS,
       "a model trained on the outputs and distributed must display \"Built with Qwen\" or "
       "\"Improved using Qwen\"; over 100M monthly users need a licence from Alibaba Cloud",
       "https://huggingface.co/Qwen/Qwen2.5-72B-Instruct/blob/main/LICENSE"),
    _l("qwen-research", "Qwen Research License", RESTRICTED,
       "non-commercial research use only, outputs included; a model trained on them must say "
       "\"Built with Qwen\"", "https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/LICENSE"),
    _l("gemma", "Gemma Terms of Use", CONDITIONS,
       "a model trained on Gemma outputs (distillation) is a \"Model Derivative\": it must be "
       "distributed under the Gemma terms and the Prohibited Use Policy",
       "https://ai.google.dev/gemma/terms"),
    _l("mrl", "Mistral Research License", RESTRICTED,
       "research and non-commercial use only", "https://mistral.ai/licenses/MRL-0.1.md"),
    _l("falcon", "Falcon LLM License", CONDITIONS,
       "Apache-2.0 based, with an acceptable use policy that derivatives must follow",
       "https://falconllm.tii.ae/falcon-terms-and-conditions.html"),
    _l("openai-terms", "OpenAI Terms of Use", RESTRICTED,
       "the terms forbid using output to develop models that compete with OpenAI",
       "https://openai.com/policies/terms-of-use"),
    _l("anthropic-terms", "Anthropic Commercial Terms", RESTRICTED,
       "the terms forbid using the services to build a competing product, including "
       "training competing AI models", "https://www.anthropic.com/legal/commercial-terms"),
    _l("gemini-terms", "Gemini API Additional Terms", RESTRICTED,
       "the terms forbid using the services to develop models that compete with Gemini",
       "https://ai.google.dev/gemini-api/terms"),
]}

# Model family (regex on the lowercased model name or path) -> licence id, first match
# wins, so specific entries come before general ones.
_QWEN25_SIZES = r"qwen2\.5[-_.]?(?:coder[-_.]?|math[-_.]?)?"
FAMILIES: list[tuple[str, str]] = [
    (r"smollm", "apache-2.0"),
    (r"llama[-_ ]?2", "llama2"),
    (r"llama[-_ ]?3\.3", "llama3.3"),
    (r"llama[-_ ]?3\.2", "llama3.2"),
    (r"llama[-_ ]?3\.1", "llama3.1"),
    (r"llama[-_ ]?3(?![.\d])", "llama3"),
    (_QWEN25_SIZES + r"3b", "qwen-research"),
    (_QWEN25_SIZES + r"72b", "qwen"),
    (r"qwen2\.5", "apache-2.0"),
    (r"qwen[23]", "apache-2.0"),
    (r"gemma", "gemma"),
    (r"mistral[-_ ]?large|codestral|ministral", "mrl"),
    (r"mistral|mixtral", "apache-2.0"),
    (r"\bphi[-_ ]?[234]", "mit"),
    (r"deepseek[-_ ]?r1", "mit"),
    (r"olmo|granite|tinyllama|pythia", "apache-2.0"),
    (r"falcon", "falcon"),
    (r"\bgpt-|\bo[134](?:-|$)|chatgpt|davinci", "openai-terms"),
    (r"claude", "anthropic-terms"),
    (r"gemini", "gemini-terms"),
]

# `general.license` spellings in GGUF files and model cards -> our ids
_ALIASES = {"apache 2.0": "apache-2.0", "apache2": "apache-2.0", "llama3_1": "llama3.1",
            "llama3_2": "llama3.2", "llama3_3": "llama3.3", "gemma-terms": "gemma",
            "qwen-research-license": "qwen-research", "mistral-research": "mrl"}


def by_id(licence_id: str, source: str = "config") -> Licence:
    """Terms for a licence id (case-insensitive); an id we don't know is `unknown`
    terms under that name, so a user-set licence is never silently upgraded."""
    key = licence_id.strip().lower()
    key = _ALIASES.get(key, key)
    lic = LICENCES.get(key)
    if lic is None:
        return Licence(licence_id, licence_id, UNKNOWN, "not in smolforge's licence table: check its terms",
                       source=source)
    return Licence(lic.id, lic.name, lic.training, lic.note, lic.url, source)


def by_model_name(name: str) -> Licence | None:
    low = name.lower()
    for pattern, lid in FAMILIES:
        if re.search(pattern, low):
            return by_id(lid, "table")
    return None


def unknown(model: str | None) -> Licence:
    return Licence("unknown", "unknown", UNKNOWN,
                   f"no licence found for {model!r}: set `licence:` in the engine config", source="unknown")


def gguf_metadata(path: str | Path, keys: tuple[str, ...] = ("general.",)) -> dict[str, Any]:
    """The GGUF header's key/value pairs whose key starts with one of `keys` (the
    format's public spec: magic, version, tensor count, kv count, then typed kvs).
    Reads only the header, never the tensors."""
    p = Path(path)
    st = p.stat()
    return dict(_gguf_kv(str(p.resolve()), st.st_size, st.st_mtime_ns, keys))


@lru_cache(maxsize=64)
def _gguf_kv(path: str, size: int, mtime: int, keys: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    out = []
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        (version,) = struct.unpack("<I", f.read(4))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        _, n_kv = struct.unpack("<QQ", f.read(16))

        def string() -> str:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8", "replace")

        def value(t: int, keep: bool) -> Any:
            if t == 8:
                if keep:
                    return string()
                (n,) = struct.unpack("<Q", f.read(8))
                f.seek(n, os.SEEK_CUR)
                return None
            if t == 9:
                et, n = struct.unpack("<IQ", f.read(12))
                if not keep and et in scalar:
                    f.seek(n * struct.calcsize(scalar[et]), os.SEEK_CUR)
                    return None
                return [value(et, keep) for _ in range(n)]
            fmt = "<" + scalar[t]
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        for _ in range(n_kv):
            key = string()
            (t,) = struct.unpack("<I", f.read(4))
            keep = key.startswith(keys)
            v = value(t, keep)
            if keep:
                out.append((key, v))
    return tuple(out)


def from_gguf(path: str | Path) -> Licence | None:
    """The licence a GGUF file declares (None when it declares none)."""
    try:
        meta = gguf_metadata(path)
    except (OSError, ValueError, struct.error):
        return None
    lid = meta.get("general.license")
    if isinstance(lid, str) and lid.strip().lower() == "other" and meta.get("general.license.name"):
        lid = meta["general.license.name"]
    if not isinstance(lid, str) or not lid.strip():
        return None
    return by_id(lid, "gguf")


def engine_licence(engine: Any) -> Licence:
    """An engine's licence: its config, its GGUF file's metadata, the family table."""
    configured = getattr(engine, "licence", None)
    if configured:
        return by_id(configured, "config")
    model = getattr(engine, "model", None)
    return model_licence(str(model) if model is not None else None, getattr(engine, "kind", "") == "llamacpp")


def model_licence(model: str | None, local: bool = False) -> Licence:
    """A model's licence from its GGUF file (when `local` and found) or its name."""
    if not model:
        return unknown(model)
    if local:
        try:
            from smolforge.engines.models import resolve_model_path

            lic = from_gguf(resolve_model_path(model))
        except (FileNotFoundError, OSError):
            lic = None
        if lic is not None:
            return lic
    return by_model_name(Path(model).name if local else model) or by_model_name(model) or unknown(model)


@lru_cache(maxsize=256)
def _licence_id(configured: str | None, kind: str, model: str | None) -> str:
    if configured:
        return by_id(configured).id
    return model_licence(model, kind == "llamacpp").id


def licence_id(engine: Any) -> str:
    """The id of an engine's licence, for each record's provenance (memoised)."""
    model = getattr(engine, "model", None)
    return _licence_id(getattr(engine, "licence", None), getattr(engine, "kind", ""),
                       None if model is None else str(model))
