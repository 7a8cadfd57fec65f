"""GAIA2-style agent traces (benchmark ``gaia2``, alias ``agent``): long multi-turn tool-use transcripts
whose last assistant turn is an action.

Accepted inputs (a file, or a folder of ``*.json`` files):

* a plain messages list ``[{"role": ..., "content": ...}, ...]`` or ``{"messages": [...], "expected": {...}}``;
* an Agents Research Environments (ARE) trace: ``{"world_logs": [...]}`` whose entries (dicts or JSON
  strings) carry ``log_type`` (``system_prompt``, ``task``, ``llm_output``, ``observation``, ``error``,
  ``final_answer``) and ``content``; the expected action sits in ``expected`` (or ``metadata.expected``).

The last assistant message is the recorded completion (localised as is, unless the run regenerates it).
The checker parses the ARE action format (``Action: tool`` + ``Action Input: {json}``, or a JSON
``{"action": ..., "action_input": ...}``) and compares tool name and arguments with ``expected``
(``{"tool": ..., "args": {...}}``; listed args must match, others are free). It reports where the
action went wrong: the tool name, or the first wrong argument value.

Data: ``--data`` (a trace file or a folder of traces), else ``$CONTRASTLENS_DATA/agent_traces`` when that
exists, else the shipped synthetic trace. There is no hub fall-back: the GAIA2 dataset on the hub
(``meta-agents-research-environments/gaia2``) holds scenarios to run in ARE, not recorded traces.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from contrastlens.benchmarks.base import Benchmark, Item, ItemError, Score
from contrastlens.errors import InputError

_ARE_ROLES = {"system_prompt": "system", "task": "user", "user": "user", "llm_output": "assistant",
              "observation": "tool", "error": "tool", "final_answer": "assistant", "tool_call": None}


def messages_from_are(trace: dict[str, Any]) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    for raw in trace.get("world_logs") or []:
        log = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(log, dict):
            continue
        role = _ARE_ROLES.get(str(log.get("log_type", "")), None)
        content = log.get("content")
        if role is None or content is None:
            continue
        msgs.append({"role": role, "content": str(content)})
    return msgs


def parse_action(text: str) -> tuple[str, dict[str, Any], dict[str, int]] | None:
    """(tool, args, offsets) of the first action in ``text``; offsets map "tool" and each arg name to
    the character offset of its value."""
    m = re.search(r"Action:\s*([\w.:-]+)\s*\n?\s*Action Input:\s*", text)
    if m:
        tool, tool_at, start = m.group(1), m.start(1), m.end()
    else:
        m = re.search(r'"action"\s*:\s*"([^"]+)"', text)
        if not m:
            return None
        tool, tool_at = m.group(1), m.start(1)
        a = re.search(r'"action_input"\s*:\s*', text[m.end():])
        start = m.end() + a.end() if a else len(text)
    args: dict[str, Any] = {}
    offsets = {"tool": tool_at}
    brace = text.find("{", start)
    if brace >= 0:
        try:
            args, _ = json.JSONDecoder().raw_decode(text[brace:])
        except ValueError:
            args = {}
        if not isinstance(args, dict):
            args = {}
        for k, v in args.items():
            km = re.search(r'"' + re.escape(str(k)) + r'"\s*:\s*', text[brace:])
            if km:
                offsets[str(k)] = brace + km.end()
            del v
    return tool, args, offsets


class AgentTraces(Benchmark):
    name = "gaia2"
    default_file = "agent_traces"
    hub_id = None  # GAIA2 on the hub is ARE scenarios, not traces (see the module docstring)
    default_max_new_tokens = 96

    def resolve(self, path, data_dir):
        """``path`` (a trace file or a folder of traces), else ``data_dir/agent_traces``, else
        ``$CONTRASTLENS_DATA/agent_traces`` when it exists, else the shipped synthetic trace."""
        if path is not None:
            p = Path(path).expanduser()
            if not p.exists():
                raise InputError(f"{self.name}: data {p} not found (pass --data a trace file or a folder of "
                                 "*.json traces)")
            return p
        if data_dir is not None:
            return super().resolve(None, data_dir)
        return self.local_file(None, None) or synthetic_trace_path()

    def load(self, path=None, *, data_dir=None):
        root = self.resolve(path, data_dir)
        files = sorted(root.glob("*.json")) if root.is_dir() else [root]
        items, bad = [], []
        for f in files:
            try:
                items.append(self._item(f))
            except (ItemError, ValueError) as e:
                bad.append((f.stem, str(e).splitlines()[0]))
        if not items:
            first = bad[0][1] if bad else "no .json files"
            raise InputError(f"{root}: no agent traces ({first}); is this the right benchmark?")
        return items, bad

    def _item(self, f: Path) -> Item:
        data = json.loads(f.read_text(encoding="utf-8"))
        expected = None
        if isinstance(data, list):
            msgs = data
        elif isinstance(data, dict) and "world_logs" in data:
            msgs = messages_from_are(data)
            expected = data.get("expected") or (data.get("metadata") or {}).get("expected")
        elif isinstance(data, dict) and isinstance(data.get("messages"), list):
            msgs = data["messages"]
            expected = data.get("expected")
        else:
            raise ItemError(f"agent trace {f.name}: neither a messages list nor an ARE trace (world_logs)")
        for m in msgs:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ItemError(f"agent trace {f.name}: a message lacks role/content")
        if not expected or "tool" not in expected:
            raise ItemError(f"agent trace {f.name}: missing field expected.tool (the correct action)")
        recorded = None
        if msgs and msgs[-1]["role"] == "assistant":
            recorded = str(msgs[-1]["content"])
            msgs = msgs[:-1]
        iid = str((data.get("metadata") or {}).get("id", f.stem) if isinstance(data, dict) else f.stem)
        return Item(iid, {"messages": msgs, "expected": expected, "file": f.name}, recorded)

    def messages(self, item):
        out = []
        for m in item.data["messages"]:
            role = m["role"]
            if role == "tool":  # chat templates without a tool role: observations come back as the user
                out.append({"role": "user", "content": f"Observation: {m['content']}"})
            else:
                out.append({"role": role, "content": str(m["content"])})
        return out

    def score(self, item, completion):
        exp = item.data["expected"]
        act = parse_action(completion)
        if act is None:
            return Score(False, {"reason": "no action found", "expected": exp}, None)
        tool, args, offs = act
        details = {"tool": tool, "args": args, "expected": exp}
        if tool != exp["tool"]:
            return Score(False, {**details, "reason": "wrong tool"}, offs["tool"])
        for k, v in (exp.get("args") or {}).items():
            if k not in args:
                return Score(False, {**details, "reason": f"missing argument {k}"}, None)
            if str(args[k]).strip().lower() != str(v).strip().lower():
                return Score(False, {**details, "reason": f"wrong argument {k}"}, offs.get(k))
        return Score(True, details, None)

    def segments(self, item, prompt):
        msgs = item.data["messages"]
        spans: dict[str, list[tuple[int, int]]] = {"instruction": [], "query": []}
        cur = 0
        for m in msgs:
            c = str(m["content"])
            i = prompt.find(c, cur)
            if i < 0:
                continue
            if m["role"] == "system":
                spans["instruction"].append((i, i + len(c)))
            elif m["role"] == "user":
                spans["query"].append((i, i + len(c)))
            cur = i + len(c)
        return spans


def synthetic_trace_path() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "agent_synthetic_trace.json"
