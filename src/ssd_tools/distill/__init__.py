"""Distilling a draft model for a target: data, training, export, acceptance evaluation.

`ssd distill` (:mod:`ssd_tools.distill.pipeline`) builds a draft; `ssd eval-pair`
(:mod:`ssd_tools.distill.evaluate`) measures a target/draft pair. See docs/draft.md.
"""
