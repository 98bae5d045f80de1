"""Distilling a draft model for a target: data, training, export, acceptance evaluation.

`ssd distill` (:mod:`ssd.distill.pipeline`) builds a draft; `ssd eval-pair`
(:mod:`ssd.distill.evaluate`) measures a target/draft pair. See docs/draft.md.
"""
