"""Generation throughput on the bundled SmolLM2-135M: smolforge's `llamacpp` engine against
(a) a loop over llama-cpp-python's high-level `Llama.create_chat_completion` (how other
tools call llama.cpp), (b) a minimal low-level batched decode written here (the ceiling:
every prompt in its own seq_id, one `llama_decode` per step, greedy argmax, no extras) and
(d) llama.cpp's own OpenAI-compatible server with every request sent at once: the C++
`llama-server` (continuous batching over `--parallel` slots) when one is on PATH or given
with `--llama-server`, else `python -m llama_cpp.server`, which serves one request at a
time (llama-cpp-python builds no C++ server binary); the output says which ran.

Every side decodes the same chat prompts greedily, up to `--tokens` new tokens each (a
sequence stops early at an end-of-generation token), with the same thread count, after an
untimed warm-up on the same model. Model loading is not timed. Prints JSON with tokens/s
of each and the ratios of c (smolforge) to the others (targets: c/a >= 1.6, c/b >= 0.95).

    python benchmarks/generation.py                      # 64 prompts x 128 tokens
    python benchmarks/generation.py --prompts 8 --tokens 16   # quick check

Builds (issue #20): `--native-site DIR` compares the installed llama.cpp build (the
portable x86-64-v3 default) with a native one installed in DIR (`make llama-native-site`
puts it in .venv/llama-native), each in its own child process, alternating for --rounds:
smolforge's engine on the generation workload, and the `fineweb-edu` criteria judge
(prefill-heavy: 7 questions per text) through a whole `smolforge.run`. Prints tokens/s of
each, the ratios portable/native, and whether greedy texts and judge scores agree.

    python benchmarks/generation.py --native-site .venv/llama-native --rounds 2
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import llama_cpp as lc
import numpy as np
from llama_cpp import Llama
from llama_cpp._logger import set_verbose

from smolforge.engines.base import Request
from smolforge.engines.chat_template import ChatTemplate
from smolforge.engines.llamacpp import LlamaCppEngine, _cores
from smolforge.engines.models import resolve_model_path

TOPICS = [
    "photosynthesis",
    "the water cycle",
    "prime numbers",
    "black holes",
    "the Roman empire",
    "volcanoes",
    "honey bees",
    "the French revolution",
    "plate tectonics",
    "vaccines",
    "the stock market",
    "recursion",
    "climate change",
    "the human heart",
    "rainbows",
    "electricity",
    "the printing press",
    "tides",
    "DNA",
    "friction",
]
TASKS = [
    "Explain {} to a ten-year-old.",
    "Write a short paragraph about {}.",
    "List three facts about {}.",
    "Why does {} matter? Answer briefly.",
]


def prompts(n: int) -> list[list[dict[str, str]]]:
    out = []
    for i in range(n):
        task, topic = TASKS[i % len(TASKS)], TOPICS[(i // len(TASKS)) % len(TOPICS)]
        suffix = "" if i < len(TASKS) * len(TOPICS) else f" (variant {i})"
        out.append([{"role": "user", "content": task.format(topic) + suffix}])
    return out


def run_highlevel(path: str, chats: list, max_tokens: int, threads: int) -> tuple[int, float, list]:
    llm = Llama(
        model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    llm.create_chat_completion(messages=chats[0], max_tokens=2, temperature=0)  # warm-up
    n, texts = 0, []
    t0 = time.perf_counter()
    for chat in chats:
        out = llm.create_chat_completion(messages=chat, max_tokens=max_tokens, temperature=0)
        n += out["usage"]["completion_tokens"]
        texts.append(out["choices"][0]["message"]["content"])
    dt = time.perf_counter() - t0
    llm.close()
    return n, dt, texts


def run_ceiling(
    path: str, chats: list, max_tokens: int, threads: int, parallel: int, unified: bool
) -> tuple[int, float, list]:
    """The least a batched decode must do: no scheduler, no samplers, no stop strings."""
    model = lc.llama_model_load_from_file(path.encode(), lc.llama_model_default_params())
    vocab = lc.llama_model_get_vocab(model)
    n_vocab = lc.llama_vocab_n_tokens(vocab)
    tmpl = ChatTemplate(lc.llama_model_chat_template(model, None).decode())
    toks = []
    for chat in chats:
        raw = tmpl.render(chat).encode()
        buf = (lc.llama_token * (len(raw) + 8))()
        k = lc.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, True)
        toks.append(list(buf[:k]))
    per_seq = -(-(max(len(t) for t in toks) + max_tokens + 1) // 256) * 256
    cp = lc.llama_context_default_params()
    cp.n_ctx, cp.n_seq_max, cp.kv_unified = per_seq * parallel, parallel, unified
    cp.n_batch = cp.n_ubatch = max(512, parallel)
    cp.n_threads = cp.n_threads_batch = threads
    ctx = lc.llama_init_from_model(model, cp)
    mem = lc.llama_get_memory(ctx)
    batch = lc.llama_batch_init(cp.n_batch, 0, 1)

    def decode(entries: list[tuple[int, int, int, bool]]) -> None:
        for i, (tok, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(entries)
        assert lc.llama_decode(ctx, batch) == 0

    def argmax(i: int) -> int:
        row = lc.llama_get_logits_ith(ctx, i)
        return int(np.ctypeslib.as_array(row, shape=(n_vocab,)).argmax())

    n_gen, texts = 0, [b""] * len(chats)
    entries: list[tuple[int, int, int, bool]] = []  # (token, pos, seq, wants logits)
    nxt: dict[int, int] = {}  # seq -> token to decode next

    # Warm-up (untimed), as the other sides get: a short prefill and two decode steps.
    decode([(t, p, 0, p == len(toks[0]) - 1) for p, t in enumerate(toks[0][:8])])
    decode([(toks[0][0], 8, 0, True)])
    lc.llama_memory_clear(mem, True)

    def flush() -> None:
        decode(entries)
        nxt.update({e[2]: argmax(i) for i, e in enumerate(entries) if e[3]})
        entries.clear()

    t0 = time.perf_counter()
    for start in range(0, len(chats), parallel):
        group = list(range(start, min(len(chats), start + parallel)))
        for s, j in enumerate(group):  # prefill every prompt, n_batch tokens per decode
            for p, t in enumerate(toks[j]):
                entries.append((t, p, s, p == len(toks[j]) - 1))
                if len(entries) == cp.n_batch:
                    flush()
        if entries:
            flush()
        pos = {s: len(toks[group[s]]) for s in nxt}
        count = dict.fromkeys(nxt, 0)
        while nxt:
            for s in [s for s, t in nxt.items() if lc.llama_vocab_is_eog(vocab, t)]:
                del nxt[s]  # end of generation
            for s in nxt:
                count[s] += 1
                texts[group[s]] += _piece(vocab, nxt[s])
            for s in [s for s in nxt if count[s] >= max_tokens]:
                del nxt[s]  # length
            live = sorted(nxt)
            if not live:
                break
            decode([(nxt[s], pos[s], s, True) for s in live])
            for i, s in enumerate(live):
                pos[s] += 1
                nxt[s] = argmax(i)
        n_gen += sum(count.values())
        lc.llama_memory_clear(mem, True)
    dt = time.perf_counter() - t0
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    return n_gen, dt, [t.decode("utf-8", "ignore") for t in texts]


def _piece(vocab: int, tok: int) -> bytes:
    buf = ctypes.create_string_buffer(64)
    n = lc.llama_token_to_piece(vocab, tok, buf, 64, 0, False)
    return buf.raw[:n]


ENGINE_THREAD_STEPS: list[dict[int, int]] = []
ENGINE_PROMPT_STATS: list[dict[str, int]] = []


def run_engine(
    chats: list, max_tokens: int, threads: int | None, parallel: int | None
) -> tuple[int, float, list]:
    """`threads` None: the engine's own choice (adaptive); otherwise fixed, as the others."""
    kw = {"n_parallel": parallel} if parallel else {}
    eng = LlamaCppEngine(n_threads=threads, **kw)
    eng.generate([Request(messages=chats[0], max_tokens=2)])  # load + warm-up
    eng._rt.stats.update(prompt_decoded=0, prompt_shared=0)
    reqs = [Request(messages=c, max_tokens=max_tokens, temperature=0.0) for c in chats]
    t0 = time.perf_counter()
    out = eng.generate(reqs)
    dt = time.perf_counter() - t0
    tuner = eng._rt.tuner
    if tuner is not None:  # which thread counts the engine chose, in decode steps
        ENGINE_THREAD_STEPS.append(dict(sorted(tuner.steps_at.items())))
    ENGINE_PROMPT_STATS.append(dict(eng._rt.stats))  # prompt tokens decoded vs. copied
    eng.close()
    assert all(r.error is None for r in out), [r.error for r in out if r.error]
    return sum(r.completion_tokens for r in out), dt, [r.completions[0].text for r in out]


SERVER_NOTE: dict[str, str] = {}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read())


def run_server(
    path: str, chats: list, max_tokens: int, threads: int, parallel: int, binary: str | None
) -> tuple[int, float, list]:
    """llama.cpp's own server, every request in flight at once (as an HTTP client would)."""
    port = _free_port()
    per_slot = 2048
    if binary:
        cmd = [binary, "-m", path, "--host", "127.0.0.1", "--port", str(port),
               "-t", str(threads), "-tb", str(threads), "-np", str(parallel),
               "-c", str(per_slot * parallel), "--cont-batching", "--no-webui"]
        SERVER_NOTE.update(server=f"C++ llama-server ({binary}), {parallel} slots, "
                           "continuous batching")
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", path, "--host",
               "127.0.0.1", "--port", str(port), "--n_ctx", str(per_slot), "--n_threads",
               str(threads), "--n_threads_batch", str(threads), "--verbose", "False"]
        SERVER_NOTE.update(server="python -m llama_cpp.server: serves ONE request at a time "
                           "(no batching; no C++ llama-server binary found: --llama-server)")
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"server exited {proc.returncode}: {log.read()[-2000:]}")
            try:
                with urllib.request.urlopen(base + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

        def ask(chat: list, n: int) -> dict:
            body = {"model": "m", "messages": chat, "max_tokens": n, "temperature": 0.0}
            return _post(base + "/v1/chat/completions", body)

        ask(chats[0], 2)  # warm-up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max(len(chats), 1)) as pool:
            outs = list(pool.map(lambda c: ask(c, max_tokens), chats))
        dt = time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    n = sum(o["usage"]["completion_tokens"] for o in outs)
    return n, dt, [o["choices"][0]["message"]["content"] for o in outs]


JUDGE_TEXTS = 16


def child_build(prompts_n: int, tokens: int) -> dict:
    """One build's figures, in this process (the parent chose the build by PYTHONPATH)."""
    import hashlib

    import smolforge as sf
    from smolforge.engines.llamacpp_build import build_info
    from smolforge.recipe import Recipe

    n, dt, texts = run_engine(prompts(prompts_n), tokens, None, None)
    corpus = Path(sf.__file__).parent / "recipes" / "edu_filter" / "corpus.jsonl"
    docs = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    items = [{"text": d} for d in docs if len(d.split()) >= 60][:JUDGE_TEXTS]
    recipe = Recipe.from_dict({"name": "judge-bench", "stages": [
        {"type": "items", "items": items},
        {"type": "judge", "rubric": "fineweb-edu", "method": "criteria", "column": "edu"}]})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = sf.run(recipe, out=f"{tmp}/run")
        judge_s = time.perf_counter() - t0
        prompt_tokens = next(s["prompt_tokens"] for s in run.manifest["stages"] if s["name"] == "judge")
        scores = [round(x, 6) for x in run.data().column("edu").to_pylist()]
    return {
        "build": build_info(),
        "gen_tok_s": n / dt,
        "texts_sha256": hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16],
        "judge_s": judge_s,
        "judge_prompt_tok_s": prompt_tokens / judge_s,
        "judge_records_s": JUDGE_TEXTS / judge_s,
        "scores_sha256": hashlib.sha256(json.dumps(scores).encode()).hexdigest()[:16],
    }


def compare_builds(native_site: str, prompts_n: int, tokens: int, rounds: int) -> dict:
    """The installed (portable) build against the native one in `native_site`, each in a
    child process, alternating; the best of `rounds` for each."""
    site = os.path.abspath(native_site)
    if not os.path.isdir(os.path.join(site, "llama_cpp")):
        sys.exit(f"no llama_cpp in {site}: build it with `make llama-native-site`")
    best: dict[str, dict] = {}
    each: dict[str, list] = {"portable": [], "native": []}
    load_before = [round(x, 2) for x in os.getloadavg()]
    for _ in range(rounds):
        for name in ("portable", "native"):
            env = dict(os.environ)
            if name == "native":
                env["PYTHONPATH"] = os.pathsep.join([site, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            out = subprocess.run(
                [sys.executable, __file__, "--child-build", "--prompts", str(prompts_n),
                 "--tokens", str(tokens)], env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{name} build failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout)
            each[name].append({k: round(r[k], 1) for k in ("gen_tok_s", "judge_prompt_tok_s")})
            b = best.setdefault(name, r)
            for k in ("gen_tok_s", "judge_prompt_tok_s", "judge_records_s"):
                b[k] = max(b[k], r[k])
    p, n = best["portable"], best["native"]
    return {
        "prompts": prompts_n, "max_tokens": tokens, "judge_texts": JUDGE_TEXTS, "rounds": rounds,
        "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "portable_build": p["build"]["isa"], "native_build": n["build"]["isa"],
        "each_round": each,
        "generation_tok_s": {"portable": round(p["gen_tok_s"], 1), "native": round(n["gen_tok_s"], 1)},
        "judge_prompt_tok_s": {"portable": round(p["judge_prompt_tok_s"], 1),
                               "native": round(n["judge_prompt_tok_s"], 1)},
        "ratio_portable_over_native_generation": round(p["gen_tok_s"] / n["gen_tok_s"], 3),
        "ratio_portable_over_native_judge": round(p["judge_prompt_tok_s"] / n["judge_prompt_tok_s"], 3),
        "greedy_texts_identical": p["texts_sha256"] == n["texts_sha256"],
        "judge_scores_identical": p["scores_sha256"] == n["scores_sha256"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for every side (default: all cores)",
    )
    ap.add_argument(
        "--engine-adaptive",
        action="store_true",
        help="let c choose its thread count (adaptive) instead of the common --threads",
    )
    ap.add_argument("--llama-server", default=None, help="path to a C++ llama-server binary")
    ap.add_argument(
        "--parallel", type=int, default=None, help="engine n_parallel (default: its own)"
    )
    ap.add_argument("--ceiling-parallel", type=int, default=64)
    ap.add_argument(
        "--ceiling-kv",
        choices=["split", "unified"],
        default="split",
        help="ceiling's KV cache: one stream per sequence, or one shared",
    )
    ap.add_argument("--skip", default="", help="comma list of phases to skip: a,b,c,d")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run a,b,c,d this many times, interleaved; report each one's best "
        "(the machine may be shared: the best run is the least disturbed)",
    )
    ap.add_argument("--native-site", default=None,
                    help="compare the installed build with the native llama_cpp in this folder")
    ap.add_argument("--child-build", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    set_verbose(False)
    if args.child_build:
        print(json.dumps(child_build(args.prompts, args.tokens)))
        return
    if args.native_site:
        print(json.dumps(compare_builds(args.native_site, args.prompts, args.tokens, args.rounds),
                         indent=2))
        return  # llama.cpp: errors only, whichever phase loads first
    path = str(resolve_model_path("smollm2-135m"))
    chats = prompts(args.prompts)
    skip = set(args.skip.split(",")) - {""}
    threads = args.threads or _cores()
    result: dict = {
        "prompts": args.prompts,
        "max_tokens": args.tokens,
        "threads": threads,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    texts = {}
    phases = {
        "a_highlevel_loop": lambda: run_highlevel(path, chats, args.tokens, threads),
        "b_lowlevel_ceiling": lambda: run_ceiling(
            path,
            chats,
            args.tokens,
            threads,
            min(args.ceiling_parallel, len(chats)),
            args.ceiling_kv == "unified",
        ),
        "c_smolforge": lambda: run_engine(
            chats, args.tokens, None if args.engine_adaptive else threads, args.parallel
        ),
        "d_llamacpp_server": lambda: run_server(
            path, chats, args.tokens, threads, args.parallel or 32, server_bin
        ),
    }
    server_bin = args.llama_server or shutil.which("llama-server")
    for _ in range(args.rounds):
        for name, fn in phases.items():
            if name[0] in skip:
                continue
            n, dt, texts[name] = fn()
            runs = result.setdefault(name, {"tok_s_each_round": []})
            runs["tok_s_each_round"].append(round(n / dt, 1))
            if n / dt >= runs.get("best", 0.0):
                runs.update(best=n / dt, tokens=n, seconds=round(dt, 2), tok_s=round(n / dt, 1))
            gc.collect()
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    for v in result.values():
        if isinstance(v, dict):
            v.pop("best", None)
    if ENGINE_THREAD_STEPS:
        result["c_steps_per_thread_count"] = ENGINE_THREAD_STEPS
    if ENGINE_PROMPT_STATS:
        result["c_prompt_tokens"] = ENGINE_PROMPT_STATS[-1]
    tps = {k: v["tok_s"] for k, v in result.items() if isinstance(v, dict) and "tok_s" in v}
    if "c_smolforge" in tps:
        if "a_highlevel_loop" in tps:
            result["ratio_c_over_a"] = round(tps["c_smolforge"] / tps["a_highlevel_loop"], 2)
        if "b_lowlevel_ceiling" in tps:
            result["ratio_c_over_b"] = round(tps["c_smolforge"] / tps["b_lowlevel_ceiling"], 2)
            same = sum(x == y for x, y in zip(texts["b_lowlevel_ceiling"], texts["c_smolforge"]))
            result["greedy_texts_identical_b_c"] = f"{same}/{len(chats)}"
        if "d_llamacpp_server" in tps:
            result["ratio_c_over_d"] = round(tps["c_smolforge"] / tps["d_llamacpp_server"], 2)
    result.update(SERVER_NOTE)
    result["c_threads"] = "adaptive" if args.engine_adaptive else threads
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
