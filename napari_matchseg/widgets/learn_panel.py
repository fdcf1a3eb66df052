"""Learning in the background: fine-tune on the bank, learn from unlabelled slices, fetch model weights."""

from __future__ import annotations

import dataclasses

from qtpy.QtWidgets import QLabel, QSpinBox

from ..bank import ReferenceBank
from ..proposers import PROPOSERS
from ..retrieval import RETRIEVERS
from ._qt import Panel, button, notify_error, notify_info, row, shows_errors


class LearnPanel(Panel):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.finetune_btn = button("Fine-tune on bank", self.finetune,
                                   "adapt MatchSeg to this bank in the background (a few minutes on a CPU)")
        self.semi_btn = button("Learn from unlabelled", self.learn_from_unlabelled,
                               "pseudo-label this layer's unlabelled slices (refined when a refiner is chosen above) "
                               "and fine-tune MatchSeg on them with the bank, in the background")
        self.download_btn = button("Download weights", self.download_weights,
                                   "fetch the checkpoints the chosen retriever/proposer need")
        self.rounds_spin = QSpinBox()
        self.rounds_spin.setRange(1, 20)
        self.rounds_spin.setValue(ctx.state.settings.semi_rounds)
        self.rounds_spin.setToolTip("pseudo-label / fine-tune rounds of Learn from unlabelled; more than a finished "
                                    "run had goes on from it (its earlier result is kept)")
        self.rows.addLayout(row(self.finetune_btn, self.semi_btn))
        self.rows.addLayout(row(QLabel("rounds"), self.rounds_spin, self.download_btn))

    @shows_errors
    def finetune(self) -> None:
        from ..training.finetune import INTERACTIVE_STEPS, default_output

        ctx = self.ctx
        bank = ctx.state.need_references(2, "fine-tuning")
        out, base, tasks = default_output(bank), ctx.state.settings.checkpoint or None, ctx.tasks

        def work():
            from ..training.finetune import finetune

            tasks.report(0, 0, "loading MatchSeg...")
            rate = tasks.rate_callback("steps")
            return finetune(ReferenceBank.open(bank.path), out, base=base, steps=INTERACTIVE_STEPS, overwrite=True,
                            log=lambda m: None, cancel=tasks.cancel_event.is_set,
                            progress=lambda s, t, info: rate(s, t, "fine-tuning..."))

        def done(path):
            ctx.propose.set_checkpoint(str(path))
            ctx.status.setText(f"fine-tuned checkpoint in use: {path}")

        tasks.run(work, done, "fine-tuning MatchSeg on the bank...")

    @shows_errors
    def learn_from_unlabelled(self) -> None:
        """``matchseg semi`` on the unlabelled slices of the current layer; resumes a cancelled run."""
        from ..training.semi import SemiConfig, layer_run_dir, run_semi, run_start

        ctx = self.ctx
        bank = ctx.state.need_references(2, "learning from unlabelled images")
        layer, images, todo = ctx.series()
        c = ctx.propose.choices()
        cfg = dataclasses.replace(ctx.state.semi_config or SemiConfig(), refine=c.refiner,
                                  device=c.device, k=c.k, sam2_image_size=c.sam2_image_size,
                                  rounds=self.rounds_spin.value())
        stack = len(images) > 1
        unlabelled = [(f"{layer.name}-{i}" if stack else layer.name, images[i], f"layer {layer.name}, slice {i}")
                      for i in todo]
        run = layer_run_dir(bank, layer.name)
        base = run_start(ctx.state.settings.checkpoint or None, bank)  # again from a run's result: that run goes on
        tasks = ctx.tasks

        def work():
            return run_semi(ReferenceBank.open(bank.path), unlabelled, run, base=base, cfg=cfg, log=lambda m: None,
                            progress=lambda d, t, text: tasks.progress_callback(text)(d, t),  # the loop's own phases
                            cancel=tasks.cancel_event.is_set, new_run_if_different=True)

        def done(path):
            ctx.propose.set_checkpoint(str(path))
            ctx.status.setText(f"learned from {len(todo)} unlabelled slices; checkpoint in use: {path}. "
                               f"Pseudo-labels (not references): {path.parent / 'pseudo'}")

        tasks.run(work, done, f"learning from {len(todo)} unlabelled slices...")

    def needed_weights(self) -> list[str]:
        """The weights the chosen models need with their default options (each registry entry lists its own,
        the default first)."""
        from ..refiners import REFINERS

        p = self.ctx.propose
        entries = [RETRIEVERS.get(p.retriever_combo.currentText()), PROPOSERS.get(p.proposer_combo.currentText())]
        if p.refiner_combo.currentText() in REFINERS:
            entries.append(REFINERS.get(p.refiner_combo.currentText()))
        return list(dict.fromkeys(e.weights[0] for e in entries if e.weights))

    def download_weights(self) -> None:
        from .. import weights

        missing = [n for n in self.needed_weights() if weights.status(n) in ("missing", "partial download")]
        if not missing:
            notify_info("every checkpoint the current choices need is on this machine")
            return
        if weights.is_offline():
            notify_error("offline: " + "; ".join(
                f"put {weights.get_entry(n).url} at {weights.where(n)}" for n in missing))
            return
        tasks = self.ctx.tasks

        def work():
            for n in missing:
                weights.fetch(n, progress=tasks.progress_callback(f"downloading {n}..."),
                              cancel=tasks.cancel_event.is_set)
            return missing

        tasks.run(work, lambda names: self.ctx.status.setText(f"downloaded {', '.join(names)}"), "downloading...")
