"""The ``diagnose`` verb: load the export (and a scorer), run the diagnostics, write what they found."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import torch

from mmreason.data.rationale_edits import EDIT_KINDS
from mmreason.data.shards import resolve_shards
from mmreason.diagnostics.diagnose import diagnose
from mmreason.diagnostics.report import figures, markdown
from mmreason.diagnostics.scorer_eval import load_scorer
from mmreason.export import load_export
from mmreason.inference import eval_batches

log = logging.getLogger(__name__)


def diagnose_command(args) -> dict:
    model = load_export(args.model, args.device, args.dtype, args.adapters)
    scorer = load_scorer(args.scorer, args.device, args.dtype) if args.scorer else None
    if args.votes > 1 and scorer is None:
        raise ValueError("--votes compares scorer-weighted with majority voting; give --scorer SCORER_EXPORT")
    urls = resolve_shards(args.data, args.split)
    torch.manual_seed(args.seed)
    skipped = Counter()
    report = diagnose(model, eval_batches(urls, model.preprocess, args.batch_size, args.limit, skipped),
                      kinds=tuple(args.edits or EDIT_KINDS), seed=args.seed, max_new_tokens=args.max_new_tokens,
                      scorer=scorer, votes=args.votes, temperature=args.temperature, source=args.rationales)
    report = {"model": args.model, "data": urls, "scorer_export": args.scorer, **report,
              "skipped_samples": dict(skipped)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnosis.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (out / "diagnosis.md").write_text(text)
    drawn = figures(report, out)
    print(text)
    log.info("wrote %s", ", ".join(str(p) for p in [out / "diagnosis.json", out / "diagnosis.md", *drawn]))
    return report
