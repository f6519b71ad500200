"""Train the small ESM-2-architecture demo model shipped as ``data/esm2_demo.pt``.

No pretrained protein LM can be downloaded here, so sciinterp ships a *demo* model: fair-esm's
``ESM2`` class (rotary attention, pre-LN blocks, token dropout, tied LM head), shrunk to a few
layers, trained with the masked-LM objective on one bacterial proteome (2,100 proteins, the
``pyhmmer`` wheel's test proteome).  It is for exercising the pipeline end to end, not for biology.

The proteins are split once (seeded) into train and held-out sets; the script reports the held-out
masked-LM perplexity (15% of residues replaced by ``<mask>``, fixed seed) beside the perplexity of
the unigram residue-frequency baseline on the same masked positions.

Resumable: the full training state is checkpointed to ``--state`` every ``--save-every`` seconds;
rerunning the same command continues from it.  Example (background, low priority)::

    nice -n 10 .venv/bin/python -m sciinterp_adapters.protein.train_demo --threads 2 --max-minutes 20
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sciinterp_adapters.protein.esm2_load import package_path, save_fair_esm
from sciinterp_adapters.protein.fasta import ProteinRecord, read_fasta

log = logging.getLogger("train_demo")


def default_fasta() -> Path:
    """The shipped proteome if present, else the pyhmmer wheel's copy (terminal ``*`` stripped on read)."""
    shipped = package_path("sciinterp_adapters.protein:data/proteome.fasta.gz")
    if shipped.is_file():
        return shipped
    import pyhmmer

    return Path(pyhmmer.__file__).parent / "tests" / "data" / "seqs" / "938293.PRJEB85.HG003687.faa"


def split(records: list[ProteinRecord], holdout: float, seed: int) -> tuple[list, list]:
    """Seeded split of whole proteins into (train, held-out)."""
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_test = max(1, round(holdout * len(records)))
    test = sorted(idx[:n_test])
    train = sorted(idx[n_test:])
    return [records[i] for i in train], [records[i] for i in test]


def encode(alphabet, seq: str) -> torch.Tensor:
    """``<cls> residues <eos>`` token ids, shape ``(len(seq) + 2,)``."""
    return torch.tensor([alphabet.cls_idx, *(alphabet.get_idx(c) for c in seq), alphabet.eos_idx])


def pad(rows: list[torch.Tensor], pad_idx: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), pad_idx, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def mask_tokens(tokens: torch.Tensor, alphabet, g: torch.Generator, p: float = 0.15, bert: bool = True):
    """BERT masking of residue tokens.  Returns (inputs, targets) with targets = -100 where not scored."""
    residue = (tokens != alphabet.padding_idx) & (tokens != alphabet.cls_idx) & (tokens != alphabet.eos_idx)
    chosen = (torch.rand(tokens.shape, generator=g) < p) & residue
    targets = torch.where(chosen, tokens, torch.full_like(tokens, -100))
    inputs = tokens.clone()
    if not bert:
        inputs[chosen] = alphabet.mask_idx
        return inputs, targets
    r = torch.rand(tokens.shape, generator=g)
    inputs[chosen & (r < 0.8)] = alphabet.mask_idx
    rand_tok = torch.randint(4, 24, tokens.shape, generator=g)  # the 20 standard residues
    swap = chosen & (r >= 0.8) & (r < 0.9)
    inputs[swap] = rand_tok[swap]
    return inputs, targets


def batches(records: list[ProteinRecord], alphabet, crop: int, max_tokens: int, g: random.Random):
    """Endless stream of padded batches of random crops, ~``max_tokens`` tokens each."""
    while True:
        order = list(range(len(records)))
        g.shuffle(order)
        rows, longest = [], 0
        for i in order:
            seq = records[i].sequence
            if len(seq) > crop:
                s = g.randrange(len(seq) - crop + 1)
                seq = seq[s : s + crop]
            longest = max(longest, len(seq) + 2)
            if rows and longest * (len(rows) + 1) > max_tokens:
                yield pad(rows, alphabet.padding_idx)
                rows, longest = [], len(seq) + 2
            rows.append(encode(alphabet, seq))
        if rows:
            yield pad(rows, alphabet.padding_idx)


@torch.inference_mode()
def evaluate(model, records, alphabet, unigram: torch.Tensor, seed: int = 1234, max_len: int = 1022) -> dict:
    """Held-out masked-LM perplexity (every chosen residue -> ``<mask>``) and the unigram baseline's."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    nll, nll_uni, n = 0.0, 0.0, 0
    recs = sorted(records, key=len)
    for s in range(0, len(recs), 16):
        toks = pad([encode(alphabet, r.sequence[:max_len]) for r in recs[s : s + 16]], alphabet.padding_idx)
        inputs, targets = mask_tokens(toks, alphabet, g, bert=False)
        logits = model(inputs)["logits"].float()
        sel = targets != -100
        nll += F.cross_entropy(logits[sel], targets[sel], reduction="sum").item()
        nll_uni += -unigram.log()[targets[sel]].sum().item()
        n += int(sel.sum())
    model.train()
    return {"ppl": math.exp(nll / n), "ppl_unigram": math.exp(nll_uni / n), "n_masked": n}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fasta", type=Path, default=None, help="training proteome (default: shipped / pyhmmer)")
    ap.add_argument("--out", type=Path, default=package_path("sciinterp_adapters.protein:data/esm2_demo.pt"))
    ap.add_argument("--state", type=Path, default=Path("/tmp/sciinterp_esm2_demo/state.pt"),
                    help="resumable training state (not shipped)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--crop", type=int, default=256, help="training crop length (residues)")
    ap.add_argument("--max-tokens", type=int, default=6144, help="tokens per training batch")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--steps", type=int, default=4000, help="cosine schedule length (steps)")
    ap.add_argument("--max-minutes", type=float, default=20.0, help="wall-time budget of this run")
    ap.add_argument("--save-every", type=float, default=60.0, help="seconds between state checkpoints")
    ap.add_argument("--holdout", type=float, default=0.1, help="fraction of proteins held out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    import esm
    from esm.model.esm2 import ESM2

    fasta = args.fasta or default_fasta()
    records = read_fasta(fasta, strip_stop=True)
    train, test = split(records, args.holdout, args.seed)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    counts = torch.ones(len(alphabet))  # add-one smoothing over residue tokens only
    counts[: 4] = 0
    counts[len(alphabet) - 4 :] = 0  # '.', '-', <null_1>, <mask> are never targets
    for r in train:
        for c, k in zip(*np.unique(list(r.sequence), return_counts=True)):
            counts[alphabet.get_idx(c)] += int(k)
    unigram = counts / counts.sum()
    log.info("%s: %d train / %d held-out proteins", fasta, len(train), len(test))

    torch.manual_seed(args.seed)
    model = ESM2(num_layers=args.layers, embed_dim=args.dim, attention_heads=args.heads,
                 alphabet=alphabet, token_dropout=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup) * (
        0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)) * 0.9 + 0.1))
    step, elapsed, history = 0, 0.0, []
    if args.state.is_file():
        st = torch.load(args.state, map_location="cpu", weights_only=False)  # our own file
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, elapsed, history = st["step"], st["elapsed"], st["history"]
        log.info("resumed from %s at step %d (%.0f s trained)", args.state, step, elapsed)
    rng = random.Random(args.seed * 1000 + step)
    g = torch.Generator().manual_seed(args.seed * 1000 + step)
    stream = batches(train, alphabet, args.crop, args.max_tokens, rng)

    def save_state() -> None:
        args.state.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.state.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "step": step, "elapsed": elapsed, "history": history}, tmp)
        os.replace(tmp, args.state)

    model.train()
    t0, last_save, run_start, ema = time.time(), time.time(), time.time(), None
    while step < args.steps and time.time() - run_start < 60 * args.max_minutes:
        inputs, targets = mask_tokens(next(stream), alphabet, g)
        logits = model(inputs)["logits"]
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 10 == 0:
            log.info("step %d loss %.3f (ppl %.2f) lr %.2e", step, ema, math.exp(ema), sched.get_last_lr()[0])
            history.append((step, ema))
        if time.time() - last_save > args.save_every:
            elapsed += time.time() - t0
            t0 = last_save = time.time()
            save_state()
    elapsed += time.time() - t0
    save_state()

    metrics = evaluate(model, test, alphabet, unigram)
    metrics_train = evaluate(model, train[:100], alphabet, unigram)
    n_params = sum(p.numel() for p in model.parameters())
    report = {
        "demo_model": True, "fasta": Path(fasta).name, "n_train": len(train), "n_heldout": len(test),
        "split_seed": args.seed, "layers": args.layers, "embed_dim": args.dim, "heads": args.heads,
        "n_params": n_params, "steps": step, "train_seconds": round(elapsed), "threads": args.threads,
        "crop": args.crop, "max_tokens": args.max_tokens,
        "heldout_ppl": round(metrics["ppl"], 3), "heldout_ppl_unigram": round(metrics["ppl_unigram"], 3),
        "heldout_masked_residues": metrics["n_masked"], "train100_ppl": round(metrics_train["ppl"], 3),
        "heldout_ids": [r.id for r in test],
    }
    save_fair_esm(model, args.out, extra={k: v for k, v in report.items() if k != "heldout_ids"})
    metrics_file = args.out.with_name(args.out.stem + "_metrics.json")
    tmp = metrics_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, metrics_file)
    log.info("held-out perplexity %.2f vs unigram %.2f; saved %s (%d params)",
             metrics["ppl"], metrics["ppl_unigram"], args.out, n_params)
    return report


if __name__ == "__main__":
    main()
