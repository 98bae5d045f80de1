"""Tools beside the `ssd` engine, installed with it but never imported by it.

`ssd_tools.distill` trains a draft for a target and measures a pair (`ssd distill`,
`ssd eval-pair`); the core reaches it only through those CLI subcommands, imported on use.
"""
