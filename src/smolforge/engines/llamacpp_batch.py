"""Continuous batching over llama.cpp's low-level API (llama-cpp-python's ctypes layer).

llama-cpp-python's high-level `Llama` decodes one sequence at a time, which leaves most of
a CPU's arithmetic idle on a small model. Here every live sequence owns a `seq_id` and one
`llama_decode` per step advances all of them: one new token per generating sequence plus
chunks of the prompts of sequences that just joined (batched prefill, as in llama.cpp's
server). A sequence that finishes frees its KV cells and its seq_id at once, and the next
waiting prompt takes the slot (continuous batching).

The KV cache is not unified: each seq_id has its own stream of cells, so attention of
one sequence never reads the others' cells. The streams are sized to what each batch needs
and only grow; llama.cpp computes a run of consecutive seq_ids in one graph, so slots go
lowest-id first and when a sequence finishes the highest live one moves into its slot.

Greedy output is a function of (model file, request) alone: batch size and composition,
request order, earlier requests and the thread count do not change it. llama.cpp's CPU
kernels compute every row of a batch on its own except on three paths, measured to change
logits bitwise (docs/engines.md): flash attention over >= 64 query tokens of one sequence
in one ubatch (a tiled kernel), flash attention of a lone token of a lone sequence over
>= 512 cells (the KV is split across threads, so the thread count shows), and weight
matmuls that switch kernels between 1 and more rows (repacked or tiled K-quants; tinyBLAS
types at 1 row). So every `llama_decode` here holds one token of every seq_id from 0 to
the highest in use (a dummy token in unused ones: always >= 2 sequences, one ubatch), or
2..63 prompt tokens of one sequence, and asks for 0 or >= 2 rows of logits; repacking and
tiled K-quant matmuls are off. Each row then takes the same kernels wherever it is decoded.

Sampling runs per sequence through a llama.cpp sampler chain seeded from the request, so a
sample depends on its own seed only. The `n` samples of one prompt decode the prompt once
and copy its KV stream to their other seq_ids.
"""

from __future__ import annotations

import ctypes
import heapq
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Tiled K-quant matmuls take over from 8 rows, so a row's bits would depend on how many
# rows share its batch; read by ggml once per process, so set before the first decode.
os.environ.setdefault("GGML_CPU_TILED_MM", "0")

import llama_cpp as lc  # noqa: E402
import numpy as np  # noqa: E402

from smolforge.engines.base import Completion, Request

PENALTY_LAST_N = 64  # tokens the repeat penalty looks back over (llama.cpp's default)
MIN_SHARED_PREFIX = 16  # shorter common prompt prefixes are decoded again, not copied
# Prompt tokens of one sequence per llama_decode: below ggml's flash-attention query tile
# (GGML_FA_TILE_Q = 64), whose tiled kernel rounds differently from the per-row one.
MAX_CHUNK = 63


@dataclass
class Job:
    """One request, prepared: its prompt tokens and, for JSON output, its grammar."""

    index: int
    req: Request
    tokens: list[int]
    grammar: str | None = None
    array: np.ndarray | None = None  # `tokens` as int32, for fast prefix comparison
    completions: list[Completion | None] = field(default_factory=list)
    remaining: int = 0
    error: str | None = None


@dataclass
class _Group:
    """Samples of one job that share one prompt prefill (at most `n_parallel` of them)."""

    job: Job
    samples: list[int]
    seq_ids: list[int] = field(default_factory=list)
    cursor: int = 0  # prompt tokens laid out in a batch
    decoded: int = 0  # prompt tokens whose KV is in the cache
    source: _Group | _Seq | None = None  # holds a prefix of this prompt to copy
    share: int = 0  # length of that prefix
    first: _Seq | None = None  # once started: the sequence of the first sample


@dataclass
class _Seq:
    """One generating sequence: a sample of a job bound to a seq_id."""

    seq_id: int
    job: Job
    sample: int
    sampler: int  # llama_sampler pointer (a chain owned by this sequence)
    grammar: int | None  # llama_sampler pointer for JSON output, checked apart from the chain
    pos: int  # position at which `token` will be decoded
    token: int = -1  # last sampled token, decoded at `pos` in the next step
    n_gen: int = 0
    text: bytearray = field(default_factory=bytearray)
    scan_from: int = 0  # characters already searched for stop strings
    top: list[dict] | None = None  # per generated token, with Request.logprobs


class ThreadTuner:
    """Chooses the thread count of each decode step from measured step times.

    llama.cpp's worker threads spin at every barrier of the compute graph. On an idle
    machine all cores are fastest (2 cores: ~1.9x one thread), but while another process
    competes for the cores a spinning thread waits for a descheduled partner and a step
    takes up to 10x longer than with half the threads. So the first two steps of a
    context are small probes, one per choice; afterwards a small step (<= 64 tokens) now
    and then runs with the other choice, and the faster time per token wins. Exploring
    backs off (up to every 256 steps) while the current choice keeps winning. Steps are
    compared only with steps of similar size. Outputs do not depend on the thread count:
    one thread computes each output row either way (the one kernel that splits a row across
    threads, flash attention of a lone token, is never used: see the module docstring).
    """

    PROBE_TOKENS = 32
    EXPLORE_MAX_TOKENS = 64

    def __init__(self, ctx: int, options: list[int]):
        self.ctx, self.options = ctx, options  # options[0]: all cores, [1]: half of them
        self.cur = 0
        self.cost: dict[tuple[int, int], float] = {}  # (size class, option) -> s/token EMA
        self.interval, self.next_explore = 8, 1
        self.steps = 0
        self.steps_at: dict[int, int] = {}  # thread count -> steps run with it
        self.used = -1
        self._set(0)

    def _set(self, i: int) -> None:
        if i != self.used:
            lc.llama_set_n_threads(self.ctx, self.options[i], self.options[i])
            self.used = i

    def token_cap(self) -> int | None:
        """Most tokens for the next step (small while probing), or None."""
        return self.PROBE_TOKENS if self.steps < 2 else None

    def before(self, n_tokens: int) -> None:
        self.steps += 1
        self.size = n_tokens.bit_length()
        explore = (
            n_tokens <= self.EXPLORE_MAX_TOKENS
            and self.steps >= self.next_explore
            and (self.size, self.cur) in self.cost
        )
        self._set(1 - self.cur if explore else self.cur)
        n = self.options[self.used]
        self.steps_at[n] = self.steps_at.get(n, 0) + 1

    def after(self, seconds: float, n_tokens: int) -> None:
        per_tok = seconds / max(n_tokens, 1)
        key = (self.size, self.used)
        if self.used == self.cur:
            old = self.cost.get(key)
            self.cost[key] = per_tok if old is None else 0.7 * old + 0.3 * per_tok
            return
        self.cost[key] = per_tok  # an exploring step
        if per_tok < 0.85 * self.cost[(self.size, self.cur)]:
            self.cur, self.interval = self.used, 8
        else:
            self.interval = min(self.interval * 2, 256)
        self.next_explore = self.steps + self.interval


class BatchedLlama:
    """A loaded GGUF model with a multi-sequence context and a continuous-batching loop."""

    def __init__(
        self,
        path: Path,
        n_ctx: int,
        n_parallel: int,
        n_batch: int,
        n_threads: int,
        tune_threads: bool = False,
    ):
        from llama_cpp._logger import set_verbose

        lc.llama_backend_init()
        set_verbose(False)  # llama.cpp logs errors only (what `Llama(verbose=False)` does)
        mparams = lc.llama_model_default_params()
        mparams.use_extra_bufts = False  # repacked weights: other kernels at 1 row than at many
        self.model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.max_ctx = n_ctx
        self.max_parallel = n_parallel
        self.n_batch = max(n_batch, 1)  # prompt tokens per step, over all sequences
        # A call holds one token of each of up to max(n_parallel, 2) streams, or one chunk.
        self.batch_size = max(n_parallel, 2, MAX_CHUNK)
        self.n_threads = n_threads
        self.tune_threads = tune_threads and n_threads > 1
        self.ctx = None
        self.n_parallel = self.n_ctx_seq = 0
        # Prompt tokens decoded vs. copied from a shared prefix (for benchmarks and tests).
        self.stats = {"prompt_decoded": 0, "prompt_shared": 0}

        self.batch = lc.llama_batch_init(self.batch_size, 0, 1)
        nb = self.batch_size
        self._tok = np.ctypeslib.as_array(self.batch.token, shape=(nb,))
        self._pos = np.ctypeslib.as_array(self.batch.pos, shape=(nb,))
        self._logits = np.ctypeslib.as_array(self.batch.logits, shape=(nb,))
        np.ctypeslib.as_array(self.batch.n_seq_id, shape=(nb,))[:] = 1
        self._seq_id = self.batch.seq_id

        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self.bos = lc.llama_vocab_bos(self.vocab)
        self.eos = lc.llama_vocab_eos(self.vocab)
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        self._eog = np.array(
            [lc.llama_vocab_is_eog(self.vocab, t) for t in range(self.n_vocab)], dtype=bool
        )
        # Candidate arrays for grammar-constrained sampling (layout of llama_token_data).
        self._cand = np.zeros(self.n_vocab, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        assert self._cand.itemsize == ctypes.sizeof(lc.llama_token_data)
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._cur_p = lc.llama_token_data_array()
        self._one_data = (lc.llama_token_data * 1)()
        self._one = lc.llama_token_data_array(self._one_data, 1, -1, False)

    def ensure_context(self, n_seq: int, n_ctx_seq: int) -> None:
        """Size the context to what a batch needs: `n_seq` sequences of `n_ctx_seq` cells
        (at most `max_parallel` and `max_ctx`). It only grows; a KV cache sized to the work
        keeps memory low without costing speed, since attention only reads used cells."""
        n_seq = min(max(n_seq, self.n_parallel, 1), self.max_parallel)
        n_ctx_seq = min(max(n_ctx_seq, self.n_ctx_seq, 1), self.max_ctx)
        n_ctx_seq = -(-n_ctx_seq // 256) * 256  # llama.cpp pads each stream to 256 cells
        if self.ctx and n_seq <= self.n_parallel and n_ctx_seq <= self.n_ctx_seq:
            return
        n_streams = max(n_seq, 2)  # a lone sequence decodes beside a dummy token
        if self.ctx:
            lc.llama_free(self.ctx)
            self.ctx = None
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx_seq * n_streams  # split evenly: one stream of cells per sequence
        cparams.n_batch = self.batch_size
        cparams.n_ubatch = self.batch_size  # every call is one ubatch
        cparams.n_seq_max = n_streams
        cparams.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED  # per-row kernel (see top)
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.kv_unified = False
        cparams.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError(
                f"llama.cpp could not create a context of {n_seq} x {n_ctx_seq} tokens "
                "(out of memory? lower n_parallel or n_ctx)"
            )
        self.n_parallel = n_seq  # streams for requests (the context may hold one more)
        self.n_ctx_seq = lc.llama_n_ctx_seq(self.ctx)
        self.pos_limit = min(self.n_ctx_seq, self.max_ctx)  # positions a sequence may use
        self.mem = lc.llama_get_memory(self.ctx)
        options = [self.n_threads, max(1, self.n_threads // 2)] if self.tune_threads else []
        self.tuner = ThreadTuner(self.ctx, options) if options else None

    # ---- vocabulary -------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        raw = text.encode("utf-8")
        n_max = len(raw) + 8
        buf = (lc.llama_token * n_max)()
        n = lc.llama_tokenize(self.vocab, raw, len(raw), buf, n_max, add_special, True)
        if n < 0:  # buffer too small: -n is the size needed
            n_max = -n
            buf = (lc.llama_token * n_max)()
            n = lc.llama_tokenize(self.vocab, raw, len(raw), buf, n_max, add_special, True)
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (memoised: a vocabulary is small, decoding is hot)."""
        key = token if not special else -1 - token
        p = self._pieces.get(key)
        if p is None:
            n = lc.llama_token_to_piece(self.vocab, token, self._piece_buf, 256, 0, special)
            p = self._piece_buf.raw[: max(n, 0)]
            self._pieces[key] = p
        return p

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.piece(token, special=True).decode("utf-8", "replace")

    def chat_template(self) -> str | None:
        raw = lc.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8") if raw else None

    # ---- sampling ---------------------------------------------------------------

    def make_sampler(self, job: Job, sample: int) -> tuple[int, int | None]:
        """The sampler chain of one sample (penalties, truncation, then either greedy at
        temperature 0 or a draw seeded by the request seed plus sample index) and, for
        JSON output, its grammar sampler, applied apart (see `_sample_grammar`)."""
        req = job.req
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        try:
            if req.repeat_penalty != 1.0:
                pen = lc.llama_sampler_init_penalties(
                    self.n_vocab, PENALTY_LAST_N, req.repeat_penalty, 0.0, 0.0
                )
                for t in job.tokens[-PENALTY_LAST_N:]:  # the prompt counts as history
                    lc.llama_sampler_accept(pen, t)
                lc.llama_sampler_chain_add(chain, pen)
            if req.temperature <= 0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            else:
                if req.top_k > 0:
                    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(req.top_k))
                if req.top_p < 1.0:
                    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(req.top_p, 1))
                if req.min_p > 0.0:
                    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(req.min_p, 1))
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(req.temperature))
                seed = (req.seed + sample) % 0xFFFFFFFF  # 0xFFFFFFFF means "random" to llama.cpp
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
            grammar = None
            if job.grammar is not None:
                grammar = lc.llama_sampler_init_grammar(self.vocab, job.grammar.encode(), b"root")
                if not grammar:
                    raise ValueError("llama.cpp rejected the grammar built from json_schema")
        except BaseException:
            lc.llama_sampler_free(chain)
            raise
        return chain, grammar

    def _sample_grammar(self, chain: int, grammar: int, idx: int) -> int:
        """Draw from the chain alone and keep the token if the grammar allows it; only
        if not, mask the vocabulary with the grammar and draw again (llama.cpp's
        common_sampler does the same). Masking all 49k tokens every step halves
        throughput; checking one token costs next to nothing."""
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, idx), (self.n_vocab,))
        cur = self._cur_p
        self._fill(logits)
        lc.llama_sampler_apply(chain, ctypes.byref(cur))
        tok = cur.data[cur.selected].id
        one = self._one
        one.data[0].id, one.data[0].logit, one.data[0].p = tok, 0.0, 0.0
        one.size, one.selected, one.sorted = 1, -1, False
        lc.llama_sampler_apply(grammar, ctypes.byref(one))
        if one.data[0].logit == -math.inf:  # not allowed here: draw among allowed tokens
            self._fill(logits)
            lc.llama_sampler_apply(grammar, ctypes.byref(cur))
            lc.llama_sampler_apply(chain, ctypes.byref(cur))
            tok = cur.data[cur.selected].id
        lc.llama_sampler_accept(grammar, tok)
        lc.llama_sampler_accept(chain, tok)
        return tok

    def top_logprobs(self, idx: int, token: int, k: int) -> dict:
        """The log-probability of `token` and the `k` most likely tokens at batch row
        `idx`, from the model's raw logits (before penalties and temperature, as
        OpenAI-compatible servers report them). Tokens with the same text are merged."""
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, idx), (self.n_vocab,))
        x = logits.astype(np.float64)
        m = x.max()
        logz = m + math.log(np.exp(x - m).sum())
        k = min(k, self.n_vocab)
        ids = np.argpartition(-x, k - 1)[:k]
        ids = ids[np.argsort(-x[ids], kind="stable")]
        top: dict[str, float] = {}
        for t in ids.tolist():
            text = self.piece(t).decode("utf-8", "replace")
            lp = float(x[t] - logz)
            top[text] = float(np.logaddexp(top[text], lp)) if text in top else lp
        return {"token": self.piece(token).decode("utf-8", "replace"),
                "logprob": float(x[token] - logz), "top": top}

    def _fill(self, logits: np.ndarray) -> None:
        """Reset the candidate array to every token with its logit."""
        self._cand["id"] = self._ids
        self._cand["logit"] = logits
        self._cand["p"] = 0.0
        cur = self._cur_p
        cur.data = self._cand.ctypes.data_as(lc.llama_token_data_p)
        cur.size, cur.selected, cur.sorted = self.n_vocab, -1, False

    def check_grammar(self, grammar: str) -> None:
        """Fail early (for this request alone) on a grammar llama.cpp cannot parse."""
        g = lc.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not g:
            raise ValueError("llama.cpp rejected the grammar built from json_schema")
        lc.llama_sampler_free(g)

    # ---- the loop ---------------------------------------------------------------

    def run(self, jobs: list[Job], on_done: Callable[[Job], None]) -> None:
        """Generate every sample of every job; `on_done(job)` as each job completes."""
        if not jobs:
            return
        self.ensure_context(
            sum(j.req.n for j in jobs), max(len(j.tokens) + j.req.max_tokens for j in jobs)
        )
        sched = _Scheduler(self, jobs, on_done)
        try:
            while sched.busy():
                sched.admit()
                sched.compact()
                sched.step()
        finally:
            sched.release()

    def decode(self, n: int) -> int:
        """Run the first `n` rows of the batch (timed for the thread tuner)."""
        self.batch.n_tokens = n
        tuner = self.tuner
        if tuner is None:
            return lc.llama_decode(self.ctx, self.batch)
        tuner.before(n)
        t0 = time.perf_counter()
        rc = lc.llama_decode(self.ctx, self.batch)
        tuner.after(time.perf_counter() - t0, n)
        return rc

    def _groups(self, jobs: list[Job]) -> Iterator[_Group]:
        for job in jobs:
            n = job.req.n
            for start in range(0, n, self.n_parallel):
                yield _Group(job, list(range(start, min(n, start + self.n_parallel))))

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            lc.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            lc.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            lc.llama_model_free(self.model)
            self.model = None


class _Scheduler:
    """The state of one `BatchedLlama.run`: waiting groups, free seq_ids, prompts being
    prefilled and sequences generating."""

    def __init__(self, llama: BatchedLlama, jobs: list[Job], on_done: Callable[[Job], None]):
        self.llama, self.on_done = llama, on_done
        self.mem = llama.mem
        self.pending: deque[_Group] = deque(llama._groups(jobs))
        self.free = list(range(llama.n_parallel))  # a heap: lowest seq_id first
        self.prefill: list[_Group] = []
        self.live: dict[int, _Seq] = {}

    def busy(self) -> bool:
        return bool(self.pending or self.prefill or self.live)

    def admit(self) -> None:
        """Waiting prompts take free slots, lowest seq_id first."""
        while self.pending and len(self.free) >= len(self.pending[0].samples):
            g = self.pending.popleft()
            if g.job.error is not None:  # an earlier part of this job failed
                self._account(g.job, len(g.samples))
                continue
            g.seq_ids = [heapq.heappop(self.free) for _ in g.samples]
            self._find_source(g)
            self.prefill.append(g)

    def _find_source(self, g: _Group) -> None:
        """Prompts often share a prefix (a system prompt, a template's opening): the
        prompt in flight sharing the longest one lends its KV cells instead of this
        group decoding them again (prefix caching, as in vLLM and llama.cpp's server)."""
        a = _array(g.job)
        limit = len(a) - 1  # the last prompt token is decoded here: it yields the logits
        best, best_n = None, MIN_SHARED_PREFIX - 1
        for src in [*self.prefill, *self.live.values()]:
            b = _array(src.job)
            m = min(limit, len(b))
            if m <= best_n:
                continue
            eq = a[:m] == b[:m]
            n = m if eq.all() else int(eq.argmin())
            if n > best_n:
                best, best_n = src, n
        if best is not None:
            g.source, g.share = best, best_n

    def _take_prefix(self, g: _Group) -> bool:
        """Copy the shared prefix into `g` once its source has decoded it. False while
        the source is not there yet (`g` waits a step)."""
        src = g.source
        if isinstance(src, _Group) and src.first is not None:
            src = src.first
        if isinstance(src, _Seq):
            alive = self.live.get(src.seq_id) is src
            ready, sid = alive, src.seq_id
        else:
            assert src is not None
            alive = src.job.error is None and src in self.prefill
            ready, sid = src.decoded >= g.share, src.seq_ids[0]
        if not alive:  # finished or failed meanwhile: decode the prompt in full
            g.source = None
            return True
        if not ready:
            return False
        dst = g.seq_ids[0]
        lc.llama_memory_seq_cp(self.mem, sid, dst, -1, -1)  # a whole KV stream...
        lc.llama_memory_seq_rm(self.mem, dst, g.share, -1)  # ...cut to the prefix
        g.cursor = g.decoded = g.share
        g.source = None
        self.llama.stats["prompt_shared"] += g.share
        return True

    def compact(self) -> None:
        """Keep live seq_ids dense: llama.cpp computes a run of consecutive seq_ids in one
        graph, so a hole left by a finished sequence would split every later step in two.
        The highest live sequence moves into the lowest hole (one KV stream copy)."""
        live, free = self.live, self.free
        while free and live and free[0] < max(live):
            hi, lo = max(live), heapq.heappop(free)
            seq = live.pop(hi)
            lc.llama_memory_seq_cp(self.mem, hi, lo, -1, -1)
            lc.llama_memory_seq_rm(self.mem, hi, -1, -1)
            seq.seq_id = lo
            live[lo] = seq
            heapq.heappush(free, hi)

    def step(self) -> None:
        """One step: a call with one token of every stream (generating sequences advance,
        prompts being prefilled add one token), then one call per prompt with a chunk of
        2..MAX_CHUNK tokens, within `n_batch` prompt tokens. The shapes are chosen so that
        no row's kernels depend on the others (module docstring)."""
        ll = self.llama
        cap = ll.tuner.token_cap() if ll.tuner is not None else None
        budget = ll.n_batch if cap is None else cap
        ready = [g for g in self.prefill if g.source is None or self._take_prefix(g)]
        # (seq_id) -> (token, pos, owner: the sequence or prompt sampled from this row, or None)
        rows: dict[int, tuple[int, int, _Seq | _Group | None]] = {}
        for seq in self.live.values():
            rows[seq.seq_id] = (seq.token, seq.pos, seq)
        for g in ready:
            last = g.cursor + 1 == len(g.job.tokens)
            rows[g.seq_ids[0]] = (g.job.tokens[g.cursor], g.cursor, g if last else None)
            g.cursor += 1
            ll.stats["prompt_decoded"] += 1
            budget -= 1
        if rows:
            dummies = [s for s in range(max(max(rows), 1) + 1) if s not in rows]
            for s in dummies:  # empty streams: a throwaway token keeps the run of ids whole
                rows[s] = (ll.bos if ll.bos >= 0 else 0, 0, None)
            outputs = []
            for n, s in enumerate(sorted(rows)):
                tok, pos, owner = rows[s]
                ll._tok[n], ll._pos[n], ll._seq_id[n][0] = tok, pos, s
                ll._logits[n] = owner is not None
                if owner is not None:
                    outputs.append((n, owner))
            if len(outputs) == 1:  # one row of logits takes another matmul kernel than two
                ll._logits[1 - outputs[0][0] if outputs[0][0] < 2 else 0] = 1
            rc = ll.decode(len(rows))
            for s in dummies:
                lc.llama_memory_seq_rm(self.mem, s, -1, -1)
            if rc != 0:
                self.fail_all(f"llama_decode failed with code {rc}")
                return
            for g in ready:
                g.decoded = g.cursor
            self.sample(outputs)
        for g in ready:
            if g not in self.prefill or g.job.error is not None:
                continue
            n = min(len(g.job.tokens) - g.cursor, MAX_CHUNK, budget)
            if n < 2:  # a lone token waits for the next step's first call
                continue
            budget -= n
            sid, pos0 = g.seq_ids[0], g.cursor
            ll._tok[:n] = g.job.tokens[pos0 : pos0 + n]
            ll._pos[:n] = np.arange(pos0, pos0 + n)
            ll._logits[:n] = 0
            for i in range(n):
                ll._seq_id[i][0] = sid
            last = pos0 + n == len(g.job.tokens)
            if last:
                ll._logits[n - 2 : n] = 1  # two rows of logits, as in the first call
            ll.stats["prompt_decoded"] += n
            rc = ll.decode(n)
            if rc != 0:
                self.fail_all(f"llama_decode failed with code {rc}")
                return
            g.cursor = g.decoded = pos0 + n
            if last:
                self.sample([(n - 1, g)])

    def sample(self, outputs: list[tuple[int, _Seq | _Group]]) -> None:
        """After a decode: start sequences whose prompt is done, advance the others."""
        for idx, owner in outputs:
            if isinstance(owner, _Group):
                self.prefill.remove(owner)
                for seq in self._start(owner):
                    self._step(seq, idx)
            else:
                owner.pos += 1
                self._step(owner, idx)

    def _start(self, g: _Group) -> list[_Seq]:
        """Prompt decoded: every sample gets its KV (a copy of the first) and sampler."""
        first = g.seq_ids[0]
        samplers: list[tuple[int, int | None]] = []
        try:
            for k in g.samples:
                samplers.append(self.llama.make_sampler(g.job, k))
        except Exception as e:  # noqa: BLE001 - this job fails, the batch goes on
            g.job.error = f"{type(e).__name__}: {e}"
            for chain, grammar in samplers:
                lc.llama_sampler_free(chain)
                if grammar is not None:
                    lc.llama_sampler_free(grammar)
            for sid in g.seq_ids:
                lc.llama_memory_seq_rm(self.mem, sid, -1, -1)
                heapq.heappush(self.free, sid)
            self._account(g.job, len(g.samples))
            return []
        started = []
        for sid, k, (chain, grammar) in zip(g.seq_ids, g.samples, samplers):
            if sid != first:
                lc.llama_memory_seq_cp(self.mem, first, sid, -1, -1)
            seq = _Seq(sid, g.job, k, chain, grammar, pos=len(g.job.tokens))
            self.live[sid] = seq
            started.append(seq)
        g.first = started[0]
        return started

    def _step(self, seq: _Seq, idx: int) -> None:
        """Sample the next token of `seq` from batch row `idx` and decide if it ends."""
        ll = self.llama
        if seq.grammar is None:
            tok = lc.llama_sampler_sample(seq.sampler, ll.ctx, idx)
        else:
            tok = ll._sample_grammar(seq.sampler, seq.grammar, idx)
        if ll._eog[tok]:
            self._finish(seq, "stop")
            return
        if seq.job.req.logprobs > 0:  # reads the logits row only: decoding is unchanged
            if seq.top is None:
                seq.top = []
            seq.top.append(ll.top_logprobs(idx, tok, seq.job.req.logprobs))
        seq.n_gen += 1
        seq.text += ll.piece(tok)
        stops = seq.job.req.stop
        if stops:
            text = seq.text.decode("utf-8", "ignore")
            cut = _find_stop(text, stops, seq.scan_from)
            if cut is not None:
                self._finish(seq, "stop", text[:cut])
                return
            seq.scan_from = max(0, len(text) - max(len(s) for s in stops) + 1)
        if seq.n_gen >= seq.job.req.max_tokens or seq.pos >= ll.pos_limit:
            self._finish(seq, "length")
            return
        seq.token = tok

    def _finish(self, seq: _Seq, reason: str, text: str | None = None) -> None:
        if text is None:
            text = seq.text.decode("utf-8", "ignore")
        top = (seq.top or []) if seq.job.req.logprobs > 0 else None
        seq.job.completions[seq.sample] = Completion(text, reason, seq.n_gen, top_logprobs=top)
        _free_samplers(seq)
        lc.llama_memory_seq_rm(self.mem, seq.seq_id, -1, -1)
        heapq.heappush(self.free, seq.seq_id)
        del self.live[seq.seq_id]
        self._account(seq.job, 1)

    def _account(self, job: Job, done: int) -> None:
        """`done` samples of `job` are over; report the job when none is left."""
        job.remaining -= done
        if job.remaining == 0:
            self.on_done(job)

    def fail_all(self, message: str) -> None:
        """llama_decode failed: every job in flight fails, waiting ones still run."""
        jobs = {id(g.job): g.job for g in self.prefill}
        jobs.update({id(s.job): s.job for s in self.live.values()})
        self.release()
        for job in jobs.values():
            job.error = message
            if job.remaining > 0:
                job.remaining = 0
                self.on_done(job)

    def release(self) -> None:
        """Free samplers and KV of whatever is still in flight (also after an exception)."""
        for s in self.live.values():
            _free_samplers(s)
        self.live.clear()
        self.prefill.clear()
        lc.llama_memory_clear(self.mem, False)
        self.free = list(range(self.llama.n_parallel))


def _array(job: Job) -> np.ndarray:
    if job.array is None:
        job.array = np.asarray(job.tokens, dtype=np.int32)
    return job.array


def _free_samplers(seq: _Seq) -> None:
    lc.llama_sampler_free(seq.sampler)
    if seq.grammar is not None:
        lc.llama_sampler_free(seq.grammar)


def _find_stop(text: str, stops: list[str], start: int) -> int | None:
    """Index of the earliest stop string in `text[start:]`, or None."""
    best = math.inf
    for s in stops:
        if s:
            i = text.find(s, start)
            if i != -1 and i < best:
                best = i
    return None if best == math.inf else int(best)
