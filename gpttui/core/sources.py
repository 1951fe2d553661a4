"""TEMPORARY stub of the corpus readers (the sources helper replaces this file)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Iterator

from gpttui.core.corpus_types import SourceStats


@dataclass(frozen=True)
class InputFile:
    path: str
    name: str
    kind: str
    size: int
    mtime_ns: int


@dataclass
class Fragment:
    source: int
    text: str
    doc_start: bool
    raw: bytes | None
    consumed: int


@dataclass
class SourcePlan:
    spec: str
    label: str
    kind: str
    inputs: list[InputFile]
    text_field: str = "text"
    split: str = "train"
    text: str | None = None

    @property
    def total_bytes(self) -> int:
        if self.text is not None:
            return len(self.text.encode("utf-8", "surrogatepass"))
        return sum(i.size for i in self.inputs)

    def fingerprint(self) -> dict:
        if self.kind == "memory":
            return {"kind": "memory", "sha256": hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()}
        return {"kind": self.kind, "spec": os.path.abspath(self.spec) if self.kind != "builtin" else self.spec,
                "inputs": [[i.name, i.size, i.mtime_ns] for i in self.inputs]}


def plan_memory(text: str, label: str = "text", spec: str = "memory") -> SourcePlan:
    return SourcePlan(spec, label, "memory", [InputFile("", label, "memory", 0, 0)], text=text)


def plan_source(spec: str, text_field: str = "text", split: str = "train") -> SourcePlan:
    from gpttui.core.data import read_corpus

    corpus = read_corpus(spec)
    if spec.startswith("builtin:"):
        return SourcePlan(spec, corpus.label, "builtin", [InputFile("", spec, "builtin", 0, 0)], text=corpus.text)
    st = os.stat(spec)
    return SourcePlan(spec, corpus.label, "file", [InputFile(os.path.abspath(spec), os.path.basename(spec), "text",
                                                             st.st_size, st.st_mtime_ns)], text=corpus.text)


def iter_fragments(plan: SourcePlan, stats: list, warnings: list, block_bytes: int = 4 << 20) -> Iterator[Fragment]:
    from gpttui.core.tokenizer import ENDOFTEXT

    stats.append(SourceStats(plan.inputs[0].name, plan.inputs[0].kind))
    docs = plan.text.split(ENDOFTEXT) if plan.kind != "memory" else [plan.text]
    for d in docs:
        for i in range(0, len(d), block_bytes):
            piece = d[i:i + block_bytes]
            stats[0].characters += len(piece)
            yield Fragment(0, piece, i == 0, None, len(piece.encode("utf-8", "surrogatepass")))
        stats[0].documents += 1
