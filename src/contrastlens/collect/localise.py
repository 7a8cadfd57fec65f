"""Localise the failing token of a failed completion and pick the contrast.

**Rollouts.** At a completion position ``p`` the model's top-k alternatives to the chosen token are each
appended to the prefix and continued greedily (one batch of k sequences sharing the prefix KV cache), and
the benchmark's checker scores each result. ``rescuable(p)`` holds when one of them passes. Positions
before the failure are rescuable, positions after it are not (the output is already committed to the
failure), so the failure position is the last rescuable position ``p*``: the chosen token there fails and
an alternative passes, and no alternative at ``p* + 1`` can undo it. Candidate positions:

* checker-guided: when the checker says where the output broke (a comma under "no commas", the line of a
  failing test, a wrong tool argument), the token there is probed first and taken when rescuable;
* otherwise a binary search for the rescuable/unrescuable boundary on ``[0, n)``: about ``log2(n)``
  probes instead of ``n``;
* when every binary-search probe fails (a weak model is rescuable at a few scattered positions only, so
  the boundary assumption does not hold), an uncertainty scan: the positions where the model was least
  sure (smallest logit margin between its token and the best alternative) are probed first, and the
  latest rescuable one is taken.

Rollouts stop as soon as the benchmark says the verdict is settled (a closed code block or ``\\boxed{}``),
and with ``rollout_slack`` after at most that many tokens more than the rest of the failed completion (a
continuation that runs far past it is usually a loop, and each long rollout costs a full batch).

The contrast is the best-ranked passing alternative at ``p*``. Fallbacks, in order: a sibling model's top
alternatives (same tokenizer), an LLM judge on an OpenAI-compatible endpoint, a manual position/contrast.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from contrastlens.benchmarks.base import Benchmark, Item
from contrastlens.cases.schema import Rollout
from contrastlens.collect.generate import PrefixCache, rollout_rows, stop_ids
from contrastlens.errors import InputError
from contrastlens.models.loaded import LoadedModel


@dataclass
class Localisation:
    failure_index: int | None = None
    contrast_id: int | None = None
    method: str | None = None
    rollouts: list[Rollout] = field(default_factory=list)  # the rollouts at failure_index
    n_rollouts: int = 0
    n_positions: int = 0
    notes: list[str] = field(default_factory=list)


class Localiser:
    """Rollout localisation of one failed completion (``completion_ids`` after ``prompt_ids``)."""

    def __init__(
        self,
        lm: LoadedModel,
        bench: Benchmark,
        item: Item,
        prompt_ids: list[int],
        completion_ids: list[int],
        *,
        k: int = 4,
        max_new_tokens: int = 256,
        max_probes: int = 12,
        scan_probes: int | None = None,
        rollout_slack: int | None = None,
        batch_rows: int = 32,
        region: tuple[int, int] | None = None,
        sibling: LoadedModel | None = None,
        sibling_k: int = 10,
    ):
        self.lm, self.bench, self.item = lm, bench, item
        self.prompt_ids, self.completion = list(prompt_ids), list(completion_ids)
        self.k, self.max_new_tokens, self.max_probes = k, max_new_tokens, max_probes
        self.scan_probes = max_probes if scan_probes is None else scan_probes
        self.rollout_slack = rollout_slack
        self.batch_rows = batch_rows  # rollouts per batch when several positions are probed together
        self.region = region  # token span [start, end) the scan stays in (None: everything)
        self.sibling, self.sibling_k = sibling, sibling_k
        self.cache = PrefixCache(lm, self.prompt_ids + self.completion, keep=len(self.completion) + 1)
        self.n_rollouts = 0
        self.probes: dict[tuple[int, str], list[Rollout]] = {}
        self.excluded = set(stop_ids(lm)) | lm.special_ids()
        self._sib_logits: torch.Tensor | None = None
        self.search_notes: list[str] = []
        self._verdicts: dict[str, bool] = {}

    # ------------------------------------------------------------------ pieces
    def logits_at(self, p: int) -> torch.Tensor:
        """Next-token logits that chose completion token ``p``."""
        return self.cache.at(len(self.prompt_ids) + p - 1)

    def delta_logit(self, p: int, contrast: int) -> float:
        lg = self.logits_at(p)
        return float(lg[self.completion[p]] - lg[contrast])

    def alternatives(self, p: int, source: str = "model") -> list[tuple[int, int, float]]:
        """(rank, id, logit) of the top alternatives to the chosen token at ``p`` (model ranks/logits)."""
        lg = self.logits_at(p)
        if source == "sibling":
            if self._sib_logits is None:
                assert self.sibling is not None
                x = torch.tensor([self.prompt_ids + self.completion], device=self.sibling.device)
                keep = len(self.completion) + 1
                with torch.no_grad():
                    out = self.sibling.model(input_ids=x, use_cache=False, logits_to_keep=keep)
                self._sib_logits = out.logits[0].float()
            sl = self._sib_logits[p]  # the last len(completion) + 1 positions start at len(prompt) - 1
            order = torch.argsort(sl, descending=True).tolist()
            take = self.sibling_k
        else:
            order = torch.argsort(lg, descending=True).tolist()
            take = self.k
        rank_of = {t: r for r, t in enumerate(torch.argsort(lg, descending=True).tolist()[:5000])}
        out = []
        for t in order:
            if t == self.completion[p] or t in self.excluded:
                continue
            out.append((rank_of.get(t, 5000), t, float(lg[t])))
            if len(out) >= take:
                break
        return out

    def probe(self, p: int, source: str = "model", only: list[int] | None = None) -> list[Rollout]:
        """Roll out the alternatives at ``p`` and score them (cached per position and source)."""
        return self.probe_many([p], source, only)[0]

    def probe_many(self, positions: list[int], source: str = "model", only: list[int] | None = None
                   ) -> list[list[Rollout]]:
        """:meth:`probe` at several positions, all rollouts in one batch (cached per position and source)."""
        todo = [p for p in dict.fromkeys(positions) if (p, source) not in self.probes]
        if not todo:
            return [self.probes[(p, source)] for p in positions]
        rows: list[tuple[int, tuple[int, int, float]]] = []
        for p in todo:
            alts = self.alternatives(p, source)
            if only is not None:
                alts = [a for a in alts if a[1] in only]
            if source == "sibling":  # skip what the model's own probe already tried
                tried = {r.token_id for r in self.probes.get((p, "model"), [])}
                alts = [a for a in alts if a[1] not in tried]
            rows += [(p, a) for a in alts]
        settled = self.bench.settled
        tok = self.lm.tokenizer
        heads = {p: tok.decode(self.completion[:p], skip_special_tokens=True) for p in todo}
        gens = rollout_rows(
            self.lm, self.prompt_ids + self.completion, [len(self.prompt_ids) + p for p, _ in rows],
            [a[1] for _, a in rows], budgets=[self.budget(p) for p, _ in rows], cache=self.cache,
            settled=settled, heads=[heads[p] if settled else "" for p, _ in rows])
        self.n_rollouts += len(rows)
        out: dict[int, list[Rollout]] = {p: [] for p in todo}
        for (p, (rank, tid, logit)), (gen, _stopped) in zip(rows, gens, strict=True):
            new = [tid] + gen
            passed = self.passes(tok.decode(self.completion[:p] + new, skip_special_tokens=True))
            out[p].append(Rollout(rank=rank, token_id=tid, token_str=tok.decode([tid]), logit=logit,
                                  continuation=tok.decode(new, skip_special_tokens=True), passed=passed,
                                  source=source))
        for p in todo:
            self.probes[(p, source)] = out[p]
        return [self.probes[(p, source)] for p in positions]

    def budget(self, p: int) -> int:
        """Most tokens a rollout at ``p`` may generate after its alternative."""
        b = self.max_new_tokens - p - 1
        if self.rollout_slack is not None:  # a rescue is about as long as the completion; loops are cut
            b = min(b, len(self.completion) - p - 1 + self.rollout_slack)
        return b

    def passes(self, text: str) -> bool:
        """The checker's verdict on a rollout's full completion text (identical texts are scored once)."""
        if text not in self._verdicts:
            try:
                self._verdicts[text] = bool(self.bench.score(self.item, text).passed)
            except InputError:
                self._verdicts[text] = False
        return self._verdicts[text]

    def rescuable(self, p: int, source: str = "model") -> bool:
        return any(r.passed for r in self.probe(p, source))

    def target_rollout(self, p: int) -> Rollout:
        lg = self.logits_at(p)
        t = self.completion[p]
        rank = int((lg > lg[t]).sum())
        tok = self.lm.tokenizer
        return Rollout(rank=rank, token_id=t, token_str=tok.decode([t]), logit=float(lg[t]),
                       continuation=tok.decode(self.completion[p:], skip_special_tokens=True), passed=False)

    def _result(self, p: int, source: str, method: str) -> Localisation:
        rolls = self.probes.get((p, "model"), []) + (self.probes.get((p, "sibling"), []) if source == "sibling" else [])
        passing = sorted((r for r in rolls if r.passed), key=lambda r: r.rank)
        return Localisation(
            failure_index=p, contrast_id=passing[0].token_id, method=method,
            rollouts=sorted([self.target_rollout(p), *rolls], key=lambda r: r.rank),
            n_rollouts=self.n_rollouts, n_positions=len({q for q, _ in self.probes}),
        )

    # ------------------------------------------------------------------ search
    def margins(self) -> torch.Tensor:
        """Per completion position, the logit of the chosen token minus that of the best alternative
        (special and stop tokens excluded): small where the model hesitated."""
        n = len(self.completion)
        lg = torch.stack([self.logits_at(p) for p in range(n)]).clone()
        chosen = lg[torch.arange(n), torch.tensor(self.completion)]
        if self.excluded:
            lg[:, sorted(self.excluded)] = float("-inf")
        lg[torch.arange(n), torch.tensor(self.completion)] = float("-inf")
        return chosen - lg.max(dim=1).values

    def search(self, source: str = "model", guided: list[int] | None = None) -> int | None:
        """The failure position by rollouts with ``source`` alternatives, or None. ``guided``: positions
        the checker points at, probed first (latest first)."""
        n = len(self.completion)
        if n == 0:
            return None
        budget = [self.max_probes]

        def g(p: int) -> bool:
            budget[0] -= 1
            return self.rescuable(p, source)

        hi = n
        marks = sorted({b for b in guided or [] if 0 <= b < n}, reverse=True)
        if marks:  # all checker-guided positions in one batch; the latest rescuable one wins
            budget[0] -= len(marks)
            found = [b for b, rolls in zip(marks, self.probe_many(marks, source), strict=True)
                     if any(r.passed for r in rolls)]
            if found:
                return max(found)
            hi = min(marks)  # the break is earlier than where the checker saw it
        # binary search for the last rescuable position; lo = -1 means "none found yet" (the costly
        # probe at position 0, the longest rollout, is only made when every later probe fails)
        lo = -1
        while hi - lo > 1 and budget[0] > 0:
            mid = (lo + hi + 1) // 2 if lo < 0 else (lo + hi) // 2
            if g(mid):
                lo = mid
            else:
                hi = mid
        if lo < 0 and hi >= 1 and (0, source) not in self.probes and self.max_probes > 0:
            # every probe failed: the first token is the last candidate (one probe past the budget)
            if g(0):
                lo = 0
        if lo >= 0:
            if hi - lo > 1:
                self.search_notes.append(f"probe budget spent: the boundary lies in tokens [{lo}, {hi})")
            return lo
        return self.scan(source)

    def scan(self, source: str = "model") -> int | None:
        """Uncertainty scan: probe up to ``scan_probes`` unprobed positions (inside ``region`` when the
        checker gave one) by ascending margin, as many
        per batch as ``batch_rows`` rollouts allow, and return the latest rescuable one (positions
        before one already found are skipped)."""
        order = torch.argsort(self.margins()).tolist()
        if self.region is not None:
            order = [p for p in order if self.region[0] <= p < self.region[1]]
        group = max(1, self.batch_rows // max(self.k, 1))
        found: int | None = None
        spent = 0
        while spent < self.scan_probes:
            take = [p for p in order if (p, source) not in self.probes and (found is None or p > found)]
            take = take[: min(group, self.scan_probes - spent)]
            if not take:
                break
            spent += len(take)
            for p, rolls in zip(take, self.probe_many(take, source), strict=True):
                if any(r.passed for r in rolls):
                    found = p if found is None else max(found, p)
        if found is not None:
            self.search_notes.append(
                f"found by the uncertainty scan ({spent} positions probed by ascending top-1 margin); "
                "a later rescuable position may exist among the unprobed ones")
        return found

    def localise(self, guided: list[int] | None = None) -> Localisation:
        p = self.search("model", guided)
        if p is not None:
            res = self._result(p, "model", "rollout")
            res.notes += self.search_notes
            return res
        if self.sibling is not None:
            self.search_notes = []
            p = self.search("sibling", guided)
            if p is not None:
                res = self._result(p, "sibling", "sibling")
                res.notes += self.search_notes
                return res
        return Localisation(n_rollouts=self.n_rollouts, n_positions=len({q for q, _ in self.probes}),
                            notes=["no top-k alternative passed at the probed positions"])

    def at(self, p: int, method: str, contrast: int | None = None) -> Localisation:
        """Localisation at a given position (judge or manual): the contrast is ``contrast`` if given,
        else the best-ranked passing alternative there, else the best-ranked alternative (unverified)."""
        if not 0 <= p < len(self.completion):
            raise InputError(f"failure index {p} is outside the completion ({len(self.completion)} tokens)")
        rolls = self.probe(p, "model")
        notes = []
        if contrast is None:
            passing = sorted((r for r in rolls if r.passed), key=lambda r: r.rank)
            if passing:
                contrast = passing[0].token_id
            else:
                contrast = self.alternatives(p)[0][1]
                notes.append("no alternative passed at this position; contrast is the best-ranked alternative")
        if contrast == self.completion[p]:
            raise InputError("the contrast equals the token the model chose at the failure index")
        return Localisation(failure_index=p, contrast_id=contrast, method=method,
                            rollouts=sorted([self.target_rollout(p), *rolls], key=lambda r: r.rank),
                            n_rollouts=self.n_rollouts, n_positions=len({q for q, _ in self.probes}), notes=notes)


def char_to_token(lm: LoadedModel, completion_ids: list[int], char: int | None) -> int | None:
    """Index of the completion token whose text covers character ``char`` of the decoded completion."""
    return chars_to_tokens(lm, completion_ids, [char])[0]


def chars_to_tokens(lm: LoadedModel, completion_ids: list[int], chars: list[int | None]) -> list[int | None]:
    """:func:`char_to_token` for several offsets (the completion's prefixes are decoded once)."""
    want = [c for c in chars if c is not None]
    if not want:
        return [None] * len(chars)
    tok = lm.tokenizer
    last = max(want)
    ends: list[int] = []
    for i in range(len(completion_ids)):
        ends.append(len(tok.decode(completion_ids[: i + 1], skip_special_tokens=True)))
        if ends[-1] > last:
            break
    return [None if c is None else next((i for i, e in enumerate(ends) if e > c), None) for c in chars]


# ---------------------------------------------------------------------------------- LLM judge
JUDGE_SYSTEM = (
    "You localise the FIRST erroneous or error-causing token in a model's completion.\n"
    "You get JSON with: prompt, completion, indexed_completion (each token followed by its index in "
    "brackets, tok[idx]), and optionally ground_truth.\n"
    "Guidance:\n"
    "- If the completion has reasoning (<think>...</think>), split it from the final answer.\n"
    "- Check the final answer first; if it has no error, answer <CORRECT>.\n"
    "- Always examine the reasoning for factual and logical errors, but never for format or style.\n"
    "- Never choose special or formatting tokens. Never choose a token merely because it is a subword or "
    "punctuation.\n"
    "- For tool use: tool-response tokens are never eligible; choose the first token that commits to an "
    "action making the task unachievable (wrong or unavailable tool, hallucinated path or ID, skipped "
    "discovery step); choose the token that starts the tool name or argument; ignore surface JSON or quoting "
    "errors unless they change semantics.\n"
    "- Report the earliest error.\n"
    'Answer with JSON only: {"error_token": "...", "token_index": N, "explanation": "<50 words"}'
)


def judge_payload(lm: LoadedModel, prompt: str, completion_ids: list[int], ground_truth: str | None) -> str:
    pieces = lm.decode_tokens(completion_ids)
    return json.dumps({
        "prompt": prompt,
        "completion": lm.tokenizer.decode(completion_ids, skip_special_tokens=True),
        "indexed_completion": "".join(f"{t}[{i}]" for i, t in enumerate(pieces)),
        **({"ground_truth": ground_truth} if ground_truth else {}),
    }, ensure_ascii=False)


def parse_judge(text: str) -> int | None:
    m = re.search(r"\{.*\}", text, re.DOTALL)
    if not m:
        return None
    try:
        obj = json.loads(m.group(0))
        return int(obj["token_index"])
    except (ValueError, KeyError, TypeError):
        return None


def http_judge(url: str, model: str, api_key: str | None = None, timeout: float = 120.0
               ) -> Callable[[str], str]:
    """A judge on an OpenAI-compatible ``/chat/completions`` endpoint: payload -> answer text."""
    endpoint = url.rstrip("/") + ("" if url.rstrip("/").endswith("/chat/completions") else "/chat/completions")

    def ask(payload: str) -> str:
        body = json.dumps({"model": model, "temperature": 0, "messages": [
            {"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": payload}]}).encode()
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        req = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data: dict[str, Any] = json.loads(r.read().decode())
        return str(data["choices"][0]["message"]["content"])

    return ask
