"""Continuous batching over llama.cpp's low-level API (llama-cpp-python's ctypes layer).

llama-cpp-python's high-level `Llama` decodes one sequence at a time, which leaves most of
a CPU's arithmetic idle on a small model. Here every live sequence owns a `seq_id` and one
`llama_decode` per step advances all of them: one new token per generating sequence plus
chunks of the prompts of sequences that just joined (batched prefill, as in llama.cpp's
server). A sequence that finishes frees its KV cells and its seq_id at once, and the next
waiting prompt takes the slot (continuous batching).

The KV cache is not unified: each seq_id has its own stream of cells, so attention of
one sequence never reads the others' cells (cheaper than one shared cache with masks, and
a sequence's numbers do not depend on who shares its batch: greedy outputs are the same
at any batch size). llama.cpp computes sequences in one graph only while their seq_ids
are consecutive in the batch, so slots go lowest-id first, the batch is laid out in
seq_id order, and when a sequence finishes the highest live one moves into its slot.
The streams are sized to what each batch needs and only grow.

Sampling runs per sequence through a llama.cpp sampler chain seeded from the request, so a
sample depends on its own seed only. The `n` samples of one prompt decode the prompt once
and copy its KV stream to their other seq_ids.
"""

from __future__ import annotations

import ctypes
import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp as lc
import numpy as np

from smolforge.engines.base import Completion, Request

PENALTY_LAST_N = 64  # tokens the repeat penalty looks back over (llama.cpp's default)
MIN_SHARED_PREFIX = 16  # shorter common prompt prefixes are decoded again, not copied


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
    one thread computes each output row either way.
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
        self.model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.max_ctx = n_ctx
        self.max_parallel = n_parallel
        self.n_batch = max(n_batch, n_parallel)
        self.n_threads = n_threads
        self.tune_threads = tune_threads and n_threads > 1
        self.ctx = None
        self.n_parallel = self.n_ctx_seq = 0
        # Prompt tokens decoded vs. copied from a shared prefix (for benchmarks and tests).
        self.stats = {"prompt_decoded": 0, "prompt_shared": 0}

        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)
        nb = self.n_batch
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
        if self.ctx:
            lc.llama_free(self.ctx)
            self.ctx = None
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx_seq * n_seq  # split evenly: one stream of cells per sequence
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch
        cparams.n_seq_max = n_seq
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
        self.n_parallel = lc.llama_n_seq_max(self.ctx)
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
                outputs = sched.lay_out()
                n = self.batch.n_tokens
                tuner = self.tuner
                if tuner is not None:
                    tuner.before(n)
                    t0 = time.perf_counter()
                rc = lc.llama_decode(self.ctx, self.batch)
                if tuner is not None:
                    tuner.after(time.perf_counter() - t0, n)
                if rc != 0:
                    sched.fail_all(f"llama_decode failed with code {rc}")
                    continue
                sched.sample(outputs)
        finally:
            sched.release()

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

    def lay_out(self) -> list[tuple[int, _Seq | _Group]]:
        """Fill the batch: one token per live sequence, then prompt chunks up to n_batch,
        in seq_id order. Returns (batch row, owner) for every row that yields logits."""
        ll = self.llama
        runs: list[tuple[int, list[int], int, bool, _Seq | _Group]] = []
        for seq in self.live.values():
            runs.append((seq.seq_id, [seq.token], seq.pos, True, seq))
        cap = ll.tuner.token_cap() if ll.tuner is not None else None
        budget = (ll.n_batch if cap is None else max(cap, len(self.live))) - len(self.live)
        for g in self.prefill:
            if budget <= 0:
                break
            if g.source is not None and not self._take_prefix(g):
                continue
            toks = g.job.tokens[g.cursor : g.cursor + budget]
            last = g.cursor + len(toks) == len(g.job.tokens)
            runs.append((g.seq_ids[0], toks, g.cursor, last, g))
            ll.stats["prompt_decoded"] += len(toks)
            g.cursor += len(toks)
            budget -= len(toks)
        runs.sort(key=lambda r: r[0])

        n = 0
        outputs: list[tuple[int, _Seq | _Group]] = []
        for seq_id, toks, pos0, want, owner in runs:
            k = len(toks)
            ll._tok[n : n + k] = toks
            ll._pos[n : n + k] = np.arange(pos0, pos0 + k)
            ll._logits[n : n + k] = 0
            for i in range(n, n + k):
                ll._seq_id[i][0] = seq_id
            n += k
            if want:
                ll._logits[n - 1] = 1
                outputs.append((n - 1, owner))
        ll.batch.n_tokens = n
        return outputs

    def sample(self, outputs: list[tuple[int, _Seq | _Group]]) -> None:
        """After a decode: start sequences whose prompt is done, advance the others."""
        for g in self.prefill:
            g.decoded = g.cursor
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
        seq.job.completions[seq.sample] = Completion(text, reason, seq.n_gen)
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
