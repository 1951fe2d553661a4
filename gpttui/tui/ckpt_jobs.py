"""The Checkpoints screen's jobs (imports and exports) as plain functions ``job(progress, cancel, stage)``
returning ``(message, checkpoint to select)``, and how one run ends as a message for the screen. The
screen runs them in a thread worker; nothing here touches a widget."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from textual.message import Message

from gpttui.core import checkpoints, interop
from gpttui.core.errors import GPTTUIError
from gpttui.tui.dialogs import ImportRequest
from gpttui.tui.messages import JobDone, JobFailed

Job = Callable[..., tuple[str, "str | None"]]


def import_job(request: ImportRequest) -> tuple[str, Job]:
    """The title and the job of an import (book file, HF folder, size download, tokenizer files)."""
    name, path = request.name, request.path
    if request.kind == "book":
        def job(progress, cancel, stage):
            stage(f"Reading {Path(path).name}")
            tokenizer = None if request.tokenizer == "auto" else request.tokenizer  # None: from the vocabulary
            imported = interop.read_book(path, n_heads=request.heads, tokenizer=tokenizer)
            stage(f"Saving {name!r}")
            checkpoints.save_checkpoint(name, imported.model, optimizer=imported.optimizer_state,
                                        meta=imported.meta, overwrite=False)
            return f"Imported {path} as {name!r} ({imported.meta['tokenizer']} tokenizer).", name
        return f"Import {Path(path).name}", job
    if request.kind in ("hf", "size"):
        source = path if request.kind == "hf" else request.size

        def job(progress, cancel, stage):
            from gpttui.core import gpt2_import

            result = gpt2_import.import_gpt2(source, name, progress=progress, cancel=cancel, on_stage=stage)
            text = (f"Imported {result.size or 'GPT-2'} ({result.parameter_count / 1e6:.1f}M parameters) from "
                    f"{result.origin.get('repo_id') or result.origin.get('path') or source} as {name!r} "
                    f"in {result.seconds:.1f} s.")
            return text + "".join(" " + note for note in result.notes), name
        return (f"Import {request.size}" if request.kind == "size" else f"Import {Path(path).name}"), job

    def job(progress, cancel, stage):
        from gpttui.core import tokenizer as tokenizer_mod

        stage("Checking encoder.json and vocab.bpe")
        dest = tokenizer_mod.import_gpt2_files(path)
        return f"GPT-2 tokenizer files copied to {dest}; the gpt2 tokenizer now works offline.", None
    return "Import tokenizer files", job


def export_job(name: str, path: str, with_optimizer: bool, force: bool) -> Job:
    """Write checkpoint ``name`` as the book's file at ``path``."""
    def job(progress, cancel, stage):
        stage(f"Exporting {name!r}")
        out = interop.export_book(name, path, with_optimizer=with_optimizer, force=force)
        what = "model and optimizer" if with_optimizer else "model.state_dict()"
        return (f"Exported {name!r} to {out} ({what}; load it with torch.load(..., weights_only=True) "
                "and the book's GPTModel.load_state_dict)."), None
    return job


def outcome(job: Job, progress: Callable, cancel: threading.Event, stage: Callable) -> Message:
    """Run ``job``: :class:`JobDone`, or :class:`JobFailed` with a message for the user (never a traceback)."""
    from gpttui.core.gpt2_import import ImportCancelled

    try:
        message, select = job(progress, cancel, stage)
    except ImportCancelled as exc:
        return JobFailed(str(exc), cancelled=True)
    except GPTTUIError as exc:
        return JobFailed(str(exc))
    except MemoryError:
        return JobFailed("Not enough memory for this model.")
    except Exception as exc:  # a disk error, a file torch cannot read...: a message, not a crash
        return JobFailed(f"{type(exc).__name__}: {exc}")
    return JobDone(message, select)
