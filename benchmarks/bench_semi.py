"""Learning from unlabelled images (SAM-Match issue): a few labelled images, the rest of the train split unlabelled.

    .venv/bin/python benchmarks/bench_semi.py --dataset busi [--labelled 30] [--rounds 2] [--steps 300] \
        [--sam2-image-size 256] [--skip-sam2] [--rows a,b,b2,c3,d] [--checkpoint START] \
        [--work /tmp/matchseg-semi] [--json results.json]

In one run, evaluated on the test split with the labelled images as the bank (k = 8):
  (a) the shipped checkpoint, or ``--checkpoint`` (e.g. one trained without this dataset: the shipped one
  has seen every train label, the "unlabelled" ones too);  (b) fine-tuned on the labelled images only
  (``finetune``, rounds x steps steps of 8 episodes);  (c) the semi-supervised loop without SAM 2 started
  straight from (a) (self-training, same number of steps, 4 labelled + 4 pseudo-labelled episodes per step);
  (b2) (b) fine-tuned as long again on the labelled images;  (c2) the loop started from (b), i.e. after a
  labelled-only warm-up, with the round teacher (``--teacher round``: each round's stored pseudo-labels are
  the targets; same compute as (b2));  (c3) as (c2) with a mean teacher (a moving average of the network
  labels every weak view as it is drawn), what ``matchseg semi`` does by default;
  (c4), (c5) as (c2), (c3) with CutMix between the strong views (``--cutmix``, probability ``--cutmix-p``);
  (d) the SAM-Match refinement path, from (b), with the round teacher (the pseudo-labels' Dice is reported
  before and after refinement; ``--features DIR`` keeps LiteMedSAM's embeddings in a folder shared between
  draws, see ``encode_split.py``): ``--d-refiner litemedsam`` (default; real pretrained weights) or
  ``sam2``: no SAM 2 weights can be downloaded on the development machines, so that runs with a randomly
  initialised SAM 2 (tiny, at ``--sam2-image-size``) unless the real checkpoint is in the weights cache. ``--rows`` picks the rows (default
  a,b,b2,c3,d: the issue's four with the default loop as (c), and the equal-compute control; any of
  a,b,c,b2,c2,c3,c4,c5,d). ``--b-steps`` sets (b)'s steps apart from the loop's; run again with more
  ``--rounds`` (and ``--b-steps`` at (b)'s steps) the loop rows go on from their last round. Also reported:
  the Dice of each round's pseudo-labels against the (hidden) truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402

from napari_matchseg import weights  # noqa: E402
from napari_matchseg.bank import ReferenceBank  # noqa: E402
from napari_matchseg.checkpoint import build_matchseg  # noqa: E402
from napari_matchseg.pipeline import Pipeline, PipelineConfig, evaluate  # noqa: E402
from napari_matchseg.image_io import read_image, read_mask  # noqa: E402
from napari_matchseg.metrics import dice  # noqa: E402
from napari_matchseg.proposers.matchseg import MatchSegPredictor  # noqa: E402
from napari_matchseg.pseudo_labels import PseudoLabelStore  # noqa: E402
from napari_matchseg.retrieval import get_retriever  # noqa: E402
from napari_matchseg.training.data import read_manifest  # noqa: E402
from napari_matchseg.training.finetune import finetune  # noqa: E402
from napari_matchseg.training.semi import SemiConfig, run_semi  # noqa: E402
from napari_matchseg.training.train import GROUPS  # noqa: E402


ROWS = ("a", "b", "c", "b2", "c2", "c3", "c4", "c5", "d")
DEFAULT_ROWS = ("a", "b", "b2", "c3", "d")  # each training row is about 20 min of one CPU thread
# where each row's checkpoint is kept under --work/DATASET (reused when run again; semi_subsets.py reads them)
FINETUNED = {"b": "finetuned.safetensors", "b2": "finetuned-2x.safetensors"}
LOOP_FOLDERS = {"c": "semi", "c2": "semi-after-ft", "c3": "semi-ema-after-ft", "c4": "semi-cutmix-after-ft",
                "c5": "semi-ema-cutmix-after-ft"}  # each holds a run_semi run folder
D_FOLDER = "semi-litemedsam"  # row (d) with LiteMedSAM
# how every row is scored: the labelled images as the bank, k = 8, handcrafted retrieval (paired_dice.py too)
EVAL_CONFIG = PipelineConfig(k=8, threshold=0.5, support="retrieved", allow_self=False)


def test_pairs(data: Path, name: str, split: str = "test") -> list[tuple[Path, Path]]:
    """(image, mask) paths of a dataset's test split (or another split)."""
    return [(data / name / "images" / f"{r}.png", data / name / "masks" / f"{r}.png")
            for r in read_manifest(data, name, split, GROUPS.get(name))]


def pseudo_label_quality(run: Path, truth: dict[str, np.ndarray]) -> list[dict]:
    """Each round's pseudo-labels against the (hidden) truth; with a refiner also the model's own masks before
    refinement (``unrefined``), and over the refined images how many refinement helped or hurt (Dice +-0.01)."""
    out = []
    for folder in sorted((run / "pseudo").glob("round-*")):
        store = PseudoLabelStore(folder)
        d_all, d_before, acc, changes = [], [], [], []
        for rec in store.records():
            mask, conf = store.load(rec["name"])
            gt = truth[rec["name"]]
            d_all.append(dice(mask, gt))
            d_before.append(dice(store.load_unrefined(rec["name"]), gt))
            if rec["method"] != "confident":
                changes.append(d_all[-1] - d_before[-1])
            acc.append(float((mask == gt)[conf].mean()) if conf.any() else float("nan"))
        chosen = set(json.loads((folder / "selected.json").read_text()))
        d_sel = [d for d, rec in zip(d_all, store.records()) if rec["name"] in chosen]
        q = {"round": folder.name, "dice_vs_truth": round(float(np.mean(d_all)), 4),
             "selected": len(chosen), "selected_dice_vs_truth": round(float(np.mean(d_sel)), 4),
             "confident_pixel_accuracy": round(float(np.nanmean(acc)), 4),
             "refined": len(changes), "images": len(store)}
        if changes:
            q |= {"unrefined_dice_vs_truth": round(float(np.mean(d_before)), 4),
                  "refined_mean_dice_change": round(float(np.mean(changes)), 4),
                  "refinement_helped": sum(c > 0.01 for c in changes),
                  "refinement_hurt": sum(c < -0.01 for c in changes)}
        out.append(q)
    return out


def semi_seconds(ckpt: Path) -> float:
    """How long the semi-supervised run took (from its checkpoint, so a reused run reports it too)."""
    return build_matchseg(ckpt)[1]["seconds_this_session"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--dataset", default="busi")
    ap.add_argument("--labelled", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300, help="training steps per round")
    ap.add_argument("--b-steps", type=int, help="labelled-only steps of (b) (default: rounds x steps); a run "
                    "taken on to more rounds keeps the (b) it started from, e.g. --rounds 6 --b-steps 1200")
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--keep-fraction", type=float, default=0.5)
    ap.add_argument("--select", default="agreement", choices=("agreement", "confidence"),
                    help="how the loop scores pseudo-label reliability (SemiConfig.select)")
    ap.add_argument("--cutmix-p", type=float, default=0.5, help="CutMix probability of rows (c4) and (c5)")
    ap.add_argument("--d-refiner", default="litemedsam", choices=("litemedsam", "sam2"),
                    help="the refiner of row (d): LiteMedSAM's real weights, or SAM 2 (random unless its "
                    "checkpoint is in the weights cache)")
    ap.add_argument("--sam2-image-size", type=int, default=256)
    ap.add_argument("--features", help="where row (d) keeps the refiner's image embeddings (default: its run folder)")
    ap.add_argument("--skip-sam2", action="store_true", help="leave out row (d)")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                    help=f"which rows to run, comma-separated, of {','.join(ROWS)}")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", help="start (a)-(d) from this MatchSeg checkpoint instead of the shipped one, "
                    "e.g. one trained without --dataset (the shipped one has seen every train label)")
    ap.add_argument("--work", default="/tmp/matchseg-semi")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = set(args.rows.split(",")) - ({"d"} if args.skip_sam2 else set())
    if rows - set(ROWS):
        raise SystemExit(f"--rows: unknown rows {sorted(rows - set(ROWS))}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data, name = Path(args.data), args.dataset
    work = Path(args.work) / name
    ids = read_manifest(data, name, "train", GROUPS.get(name))
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(ids))
    lab_ids, unl_ids = [ids[i] for i in order[:args.labelled]], [ids[i] for i in order[args.labelled:]]
    bank = ReferenceBank.open(work / "bank", create=True)
    if len(bank) < len(lab_ids):
        bank.add_many(((read_image(data / name / "images" / f"{r}.png"),
                        read_mask(data / name / "masks" / f"{r}.png"), f"{r}.png") for r in lab_ids),
                      on_duplicate="skip")
    unlabelled, truth = [], {}
    for r in unl_ids:
        img = read_image(data / name / "images" / f"{r}.png")
        unlabelled.append((r, img, str(data / name / "images" / f"{r}.png")))
        truth[r] = read_mask(data / name / "masks" / f"{r}.png", img.shape)
    pairs = test_pairs(data, name)
    retriever = get_retriever("handcrafted")
    total = args.rounds * args.steps
    results: dict[str, dict] = {}

    def labelled_only(out: Path, start, steps: int) -> None:
        """Fine-tune ``start`` on the labelled images into ``out``, or reuse ``out`` if a run made it the same way
        (a reused checkpoint with other steps or another start would silently change the row)."""
        if out.exists():
            made = build_matchseg(out)[1].get("train_config", {})
            init = made.get("init_checkpoint")
            same_start = init == "default" if start is None else init not in (None, "default") and \
                Path(init).resolve() == Path(start).resolve()
            if made.get("steps") != steps or not same_start:
                raise SystemExit(f"{out} was fine-tuned for {made.get('steps')} steps from "
                                 f"{made.get('init_checkpoint')}, not {steps} from {start or 'default'}: "
                                 "use another --work folder")
            return
        finetune(bank, out, base=start, steps=steps, batch_size=8, lr=3e-4, device=args.device, log=lambda m: None)

    def score(label: str, ckpt, seconds: float, extra: dict | None = None) -> None:
        t = time.time()
        r = evaluate(Pipeline(EVAL_CONFIG, retriever=retriever, proposer=MatchSegPredictor(ckpt, device=args.device)),
                     bank, pairs)
        results[label] = {k: v for k, v in r.items() if k != "rows"} | {"train_seconds": round(seconds),
                                                                        "eval_seconds": round(time.time() - t)}
        results[label].update(extra or {})
        print(f"{name} {label:34s} Dice {r['dice_mean']:.4f} +- {r['dice_std']:.4f}  IoU {r['iou_mean']:.4f}  "
              f"n={r['n']}  train {seconds:.0f} s", flush=True)

    base = args.checkpoint
    if "a" in rows:
        score("(a) shipped" if base is None else "(a) start checkpoint", base, 0)
    ft = work / FINETUNED["b"]
    labelled_only(ft, base, args.b_steps or total)
    if "b" in rows:
        score("(b) fine-tuned on labelled", ft, build_matchseg(ft)[1]["train_seconds"])
    cfg = SemiConfig(rounds=args.rounds, steps_per_round=args.steps, confidence=args.confidence, seed=args.seed,
                     keep_fraction=args.keep_fraction, select=args.select, warmup_steps=0, teacher="round",
                     device=args.device)
    def semi_row(label: str, folder: str, start, row_cfg: SemiConfig, extra: dict | None = None,
                 refiner=None) -> None:
        """Run (or reuse) the loop in ``work/folder`` and score it, with its pseudo-labels against the truth."""
        out = run_semi(bank, unlabelled, work / folder, base=start, cfg=row_cfg, refiner=refiner,
                       log=lambda m: print("  " + m, flush=True), features_dir=args.features)
        score(label, out, semi_seconds(out), {**(extra or {}),
                                             "pseudo_labels": pseudo_label_quality(work / folder, truth)})

    if "c" in rows:
        semi_row("(c) semi, self-training", LOOP_FOLDERS["c"], base, cfg)
    # The teacher first learns from the labelled images (SAM-Match's order; `SemiConfig.warmup_steps` does the same
    # inside run_semi with the same finetune call): (c2) starts from (b). (b2) is its equal-compute control.
    if "b2" in rows:
        ft2 = work / FINETUNED["b2"]
        labelled_only(ft2, ft, total)
        label = "2x steps" if not args.b_steps or args.b_steps == total else f"(b) + {total} steps"
        score(f"(b2) fine-tuned on labelled, {label}", ft2, build_matchseg(ft2)[1]["train_seconds"])
    if "c2" in rows:
        semi_row("(c2) semi, self-training from (b)", LOOP_FOLDERS["c2"], ft, cfg)
    if "c3" in rows:
        semi_row("(c3) semi, mean teacher, from (b)", LOOP_FOLDERS["c3"], ft,
                 dataclasses.replace(cfg, teacher="ema"))
    if "c4" in rows:
        semi_row("(c4) semi, self-training + CutMix", LOOP_FOLDERS["c4"], ft,
                 dataclasses.replace(cfg, cutmix=args.cutmix_p))
    if "c5" in rows:
        semi_row("(c5) semi, mean teacher + CutMix", LOOP_FOLDERS["c5"], ft,
                 dataclasses.replace(cfg, teacher="ema", cutmix=args.cutmix_p))
    if "d" in rows and args.d_refiner == "litemedsam":
        semi_row("(d) semi, LiteMedSAM refined, from (b)", D_FOLDER, ft,
                 dataclasses.replace(cfg, refine="litemedsam"), {"refiner": "litemedsam (pretrained)"})
    elif "d" in rows:
        from napari_matchseg.sam2_model import build_sam2_model
        from napari_matchseg.refiners.sam2 import Sam2Refiner

        real = weights.where("sam2.1_hiera_tiny").is_file()
        size = 1024 if real else args.sam2_image_size
        model = build_sam2_model("sam2.1_hiera_tiny", image_size=size, random_init=not real)
        refiner = Sam2Refiner(image_size=size, model=model)
        semi_row("(d) semi, SAM 2 refined" + ("" if real else " (RANDOM SAM 2)"),
                 "semi-sam2" if real else "semi-sam2-random", ft,
                 dataclasses.replace(cfg, refine="sam2", sam2_image_size=size),
                 {"sam2_weights": "official" if real else f"random init, {size} px"}, refiner)
    print(f"\nmachine: {machine()}")
    print(f"{name}: {len(lab_ids)} labelled (bank), {len(unl_ids)} unlabelled, {len(pairs)} test images; "
          f"{args.rounds} rounds x {args.steps} steps; confidence {args.confidence}; "
          f"keep {args.keep_fraction} by {args.select}\n")
    print("| method | Dice | IoU | training (s) |\n|---|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r['dice_mean']:.3f} +- {r['dice_std']:.3f} | {r['iou_mean']:.3f} | {r['train_seconds']} |")
    for label, r in results.items():
        for q in r.get("pseudo_labels", []):
            print(f"{label} pseudo-labels {q}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "dataset": name, "args": vars(args),
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
